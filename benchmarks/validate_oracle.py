"""The simulator's oracle on 50,000 fresh clients (8 minutes on 2 cores, 2026-12-06): calibration
slope within 0.95-1.05 and not beaten by a fitted model beyond its bootstrap interval. The test
suite runs the same check on 2,500 clients (`training.simulate.oracle_check`).

    uv run python benchmarks/validate_oracle.py [--clients 50000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args()
    from training.simulate.oracle_check import oracle_check

    t0 = time.perf_counter()
    r = oracle_check(args.clients, args.seed)
    slope_ok = 0.95 <= r.slope <= 1.05
    brier_ok = r.brier_model >= r.brier_oracle_lo
    print(f"{r.n_clients:,} clients, {r.n_scored:,} with an outcome and the oracle at "
          f"session 3 ({time.perf_counter() - t0:.0f} s)\n")
    print("| check | figure | target | met |\n|---|---|---|---|")
    print(f"| calibration slope | {r.slope:.3f} [{r.slope_lo:.3f}, {r.slope_hi:.3f}] | "
          f"0.95-1.05 | {'yes' if slope_ok else 'NO'} |")
    print(f"| Brier, fitted model vs oracle | {r.brier_model:.4f} vs {r.brier_oracle:.4f} "
          f"(2.5th pct {r.brier_oracle_lo:.4f}) | model not below the oracle's interval | "
          f"{'yes' if brier_ok else 'NO'} |")
    sys.exit(0 if slope_ok and brier_ok else 1)


if __name__ == "__main__":
    main()
