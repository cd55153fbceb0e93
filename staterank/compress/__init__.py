"""Per-head recurrent-state precision vs pruning at equal bytes (issue #23).

  quant.py    precisions, their round trip and bytes per head (leaf)
  store.py    ``store_states``: a hooks.intercept handler that rounds every stored state (decode steps,
              prefill chunk boundaries); drop = probe's zero-ablation
  measure.py  greedy accuracy and teacher-forced answer NLL under a storage plan
  planner.py  plans for a byte budget: score-order ladders, the knapsack planner, random controls
  config.py   CompressConfig;  run.py  the stage (run folder, compress.json);  claim.py  its claim row
"""
