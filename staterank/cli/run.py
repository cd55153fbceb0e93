"""staterank run and staterank verify: the whole pipeline (staterank.pipeline.run) and its claims table."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..options import POS
from .common import add_options, add_parser


def command(a) -> int:
    from ..options import options
    from ..pipeline import RunConfig, run

    overrides = list(a.set or [])  # the flags are overrides of the top-level keys, after --set
    for f in options(RunConfig):
        val = getattr(a, f.name)
        if val is not None:
            overrides.append(f"{f.name}=[{val}]" if f.name == "stages" else f"{f.name}={val}")
    cfg = RunConfig.load(a.config, overrides)
    folder = run(cfg, a.out)
    report = render(folder)
    if a.ranks_csv:
        from ..report.heads_view import ranks_csv

        print(f"per-token ranks: {ranks_csv(folder)}")
    print_claims(folder)
    print(f"\nreport: {report} (and report.html)")
    return 0


def render(folder) -> str:
    from ..report import claims as rc
    from ..report import probe as rp
    from ..report import prune as rpr
    from ..report import stratify as rs

    folder = Path(folder)
    for stage, mod in (("stratify", rs), ("probe", rp), ("prune", rpr)):
        if (folder / stage / f"{stage}.json").exists():
            mod.render(folder / stage)
    return str(rc.render(folder))


def print_claims(folder) -> None:
    """Compute and print only: verify works on a read-only run and leaves claims.json as written."""
    from ..claims import claims
    from ..report.claims import claims_table

    print(claims_table(claims(folder)))


def verify(a) -> int:
    folder = Path(a.run)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a staterank run folder (no config.json)")
    from ..runio import read_json

    cfg = read_json(folder / "config.json")  # torn or foreign: one line saying so, not "no finished stage"
    if not isinstance(cfg, dict):
        raise UserError(f"{folder / 'config.json'} is not a staterank run config (a JSON object expected)")
    print_claims(folder)
    return 0


def add(sub) -> None:
    from ..pipeline import RunConfig

    p = add_parser(
        sub, "run", help="the whole pipeline: stratify → probe → prune → claims report",
        description="analyze over the context suite → stratify (with the initialisation baseline) → probe "
        "(low / high / random controls) → prune (JRNP + random baselines) → report.md whose first table lists "
        "each claim of arXiv 2602.02195 with the paper's number, ours and a verdict. A killed run resumes.",
        epilog="examples:\n  staterank run --model builtin --out runs/demo\n"
        "  staterank run --model Qwen/Qwen3-Next-80B-A3B-Instruct --config run.yaml --out runs/q3n\n"
        "  staterank run --set probe.limit=16 --set stratify.max_tokens=256 --out runs/quick\n"
        "  staterank run --model negative-control --out runs/neg   # untrained, default gates: nothing should 'hold'")
    p.add_argument("--config", default=None, help="YAML config: sections stratify, probe, prune (docs/adding-an-option.md)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. probe.limit=32 (repeatable)")
    add_options(p, RunConfig)  # the top-level keys: --model, --seed, --device, --dtype, --data-dir, --stages
    p.add_argument("--threads", type=POS, default=None, help="torch CPU threads")
    p.add_argument("--ranks-csv", action="store_true",
                   help="also write ranks.csv: every head's ranks and norms at every measured token of every context")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--out", required=True, help="run folder to create (or resume)")
    p.set_defaults(func=command)

    v = add_parser(sub, "verify", help="print the claims table of a run folder",
                   epilog="example:\n  staterank verify runs/demo")
    v.add_argument("run", help="a folder written by staterank run")
    v.set_defaults(func=verify)
