# Shared by the study drivers under experiments/ (bash; source it after setting `out`, `python`
# and the array `common`):
#   run RUN_DIR ARGS...     python run.py ARGS "${common[@]}" hydra.run.dir=RUN_DIR, unless
#                           RUN_DIR already holds a finished run (its metrics.json): a re-run of
#                           a driver skips what finished and resumes the rest
#   record RUN_DIR KEY=VALUE...
#                           append one JSON line to $out/results.jsonl: the given keys (values
#                           that read as numbers stored as numbers), then the run's val/* and
#                           test/* metrics, wall_time_s and params. A re-run records finished
#                           runs again: summaries read results by their keys, the last line wins.

run() {
    local dir=$1
    shift
    [ -f "$dir/metrics.json" ] || "$python" run.py "$@" "${common[@]}" hydra.run.dir="$dir"
}

record() {
    "$python" - "$@" >> "$out/results.jsonl" <<'PY'
import json
import sys
from pathlib import Path


def value(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


run_dir, *pairs = sys.argv[1:]
metrics = json.loads(Path(run_dir, "metrics.json").read_text())
line = {key: value(text) for key, text in (pair.split("=", 1) for pair in pairs)}
line.update({k: v for k, v in metrics.items() if k.startswith(("val/", "test/"))})
line.update(wall_time_s=metrics.get("wall_time_s"), params=metrics.get("params"))
print(json.dumps(line))
PY
}
