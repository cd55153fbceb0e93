"""The compress result as claim rows (issue #23): "at X % of state bytes, the best method keeps Y % of
the unmodified accuracy", with its paired bootstrap 95 % interval. Not a claim of the paper, so the
rows are ``informational`` (claims.py lists them apart, with no verdict)."""

from __future__ import annotations


def compress_claims(c: dict, source: str = "compress/compress.json") -> list[dict]:
    rows = []
    for b, w in (c.get("winners") or {}).items():
        top = next((r for r in w.get("curves", []) if r["curve"] == w.get("winner")), None)
        if top is None:
            continue
        r = top.get("retained") or {}
        acc = top.get("accuracy") or {}
        if r.get("ratio") is None:
            why = "the unmodified model answers nothing right: there is no accuracy to keep"
        else:
            why = (f"{w['winner']} keeps {r['ratio']:.1%} [{r['lo']:.1%}, {r['hi']:.1%}] of the unmodified accuracy "
                   f"at {top['bytes_fraction']:.1%} of the fp32 state bytes (paired bootstrap over items); "
                   "pruning-only, precision-only and random controls in the compress report")
        rows.append({
            "claim": f"Within {float(b):.0%} of the recurrent state bytes, the best storage plan keeps its accuracy",
            "paper": "— (issue #23, not in the paper)",
            "ours": {"value": r.get("ratio"), "ci": [r.get("lo"), r.get("hi")], "budget": float(b), "method": w["winner"],
                     "bytes_fraction": top["bytes_fraction"], "accuracy": acc.get("acc"),
                     "base": (c.get("base") or {}).get("all", {}).get("acc")},
            "verdict": "informational", "informational": True, "source": source, "why": why,
        })
    return rows
