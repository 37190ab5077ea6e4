"""Paper S Table 6: frozen against trainable ("not frozen") autoencoder embedding in the ae
projector, sigmoid activation, no Z-score: peak and average test accuracy over seeds.

S's claim: freezing raises both peak and average accuracy (all five datasets but the
Imagenette average).

    python analyses/s_table6_frozen.py --scale cpu
"""

from __future__ import annotations

import common
import outputs
import s_grid


def main() -> int:
    import pandas as pd

    ctx = common.cli_context(__doc__)
    b = ctx.scale.s_base
    configs = [s_grid.SConfig("ae", "sigmoid", b["dim_g"], b["dim_z"], False, frozen=f)
               for f in (True, False)]
    df = s_grid.s_results(ctx, configs)
    rows = []
    for col in s_grid.PROTOCOLS:
        for frozen, g in df.groupby("frozen", sort=False):
            rows.append({"probe": s_grid.PROTOCOL_NAMES[col],
                         "embedding": "frozen" if frozen else "not frozen",
                         "max (%)": round(float(g[col].max()), 2),
                         "avg (%)": round(float(g[col].mean()), 2),
                         "std (%)": round(float(g[col].std(ddof=1)), 2) if len(g) > 1 else None,
                         "per seed (%)": " ".join(f"{v:.2f}" for v in g.sort_values("seed")[col]),
                         "runs": len(g)})
        rows[-2]["frozen − not frozen (pt)"] = s_grid.pm_points(
            s_grid.paired_change(df, {"frozen": True}, {"frozen": False}, col))
    outputs.write_table(ctx, "s_table6_frozen", pd.DataFrame(rows),
                       title="S Table 6: frozen vs trainable autoencoder embedding (ae, sigmoid, "
                             f"dim(g) {b['dim_g']}, dim(z) {b['dim_z']}, no Z-score)",
                       notes=[f"Probe {s_grid.PROTOCOL_NAMES[c]}: {s_grid.PROTOCOLS[c]}."
                              for c in s_grid.PROTOCOLS] + [
                           "'frozen − not frozen': per-seed paired difference (mean ± SD over "
                           "seeds, seeds above 0 / seeds)."],
                       runs=df.to_dict("records"))
    return 0


if __name__ == "__main__":
    raise SystemExit(common.main_guard(main))
