"""Accuracy of SmartNoise SQL (built on OpenDP) on the five PUMS queries of
issue 5, at the same total epsilon per query as `invis bench` uses, so the
two error tables can be compared. Run:

    pip install smartnoise-sql
    python3 sandbox/benches/smartnoise_compare.py ../shared/data/pums 50

Mean relative error is over released groups and repetitions, as in
`invis bench`; "released" is the fraction of the exact answer's groups that
SmartNoise released (it censors small groups with its own tau threshold).
"""
import sys
import warnings

import pandas as pd
import snsql
from snsql import Privacy

warnings.filterwarnings("ignore")
pums_dir = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/pums"
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 50
df = pd.read_csv(f"{pums_dir}/PUMS.csv")
meta = f"{pums_dir}/PUMS.yaml"

# (label, query, group keys, exact answer)
income = df["income"].clip(0, 500000)
queries = [
    ("COUNT(*)", "SELECT COUNT(*) AS n FROM PUMS.PUMS", [], {(): len(df)}),
    ("COUNT by sex", "SELECT sex, COUNT(*) AS n FROM PUMS.PUMS GROUP BY sex", ["sex"],
     df.groupby("sex").size().to_dict()),
    ("AVG(income) by educ", "SELECT educ, AVG(income) AS a FROM PUMS.PUMS GROUP BY educ", ["educ"],
     income.groupby(df["educ"]).mean().to_dict()),
    ("SUM(income) by married", "SELECT married, SUM(income) AS s FROM PUMS.PUMS GROUP BY married", ["married"],
     income.groupby(df["married"]).sum().to_dict()),
    ("COUNT by race, sex", "SELECT race, sex, COUNT(*) AS n FROM PUMS.PUMS GROUP BY race, sex", ["race", "sex"],
     df.groupby(["race", "sex"]).size().to_dict()),
]


def key_of(row, keys):
    vals = tuple(int(row[k]) for k in keys)
    return vals[0] if len(vals) == 1 else vals


print(f"SmartNoise SQL {snsql.__version__ if hasattr(snsql, '__version__') else ''} on PUMS.csv, {reps} releases per query")
print(f"{'query':<26} {'epsilon':>7} {'smartnoise':>11} {'released':>9}")
for eps in [1.0, 0.1]:
    for label, q, keys, exact in queries:
        # SmartNoise charges epsilon per mechanism; scale it so the whole
        # query costs `eps`, as one Invis query does.
        probe = snsql.from_df(df, privacy=Privacy(epsilon=1.0, delta=1e-7), metadata=meta)
        cost_eps, _ = probe.get_privacy_cost(q)
        per = eps / max(cost_eps, 1e-9)
        reader = snsql.from_df(df, privacy=Privacy(epsilon=per, delta=1e-7), metadata=meta)
        err, n, released = 0.0, 0, 0
        try:
            reader.execute_df(q)
        except ValueError as e:
            print(f"{label:<26} {eps:>7}  refused: {str(e).split('.')[0]}")
            continue
        for _ in range(reps):
            res = reader.execute_df(q)
            for _, row in res.iterrows():
                k = key_of(row, keys) if keys else ()
                if k not in exact or exact[k] == 0:
                    continue
                v = row.iloc[len(keys)]
                if pd.isna(v):
                    continue
                released += 1
                err += abs(float(v) - exact[k]) / abs(exact[k])
                n += 1
        rel = err / n if n else float("nan")
        frac = released / (len(exact) * reps)
        print(f"{label:<26} {eps:>7} {100 * rel:>10.2f}% {100 * frac:>8.0f}%   ({cost_eps:g} mechanisms)")
