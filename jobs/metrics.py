"""Per-step metrics of a job: merging the workers' records, progress lines, steps to target,
the job's summary row."""
from __future__ import annotations

import numpy as np

from nina.accounting import PARTS

# per-step counts summed over workers (and, in the summary, over steps): the byte parts of
# nina.accounting each way, the elements all-reduced, one copy of the compressed payload
ACCOUNT_KEYS = ("elements", "payload_bits_up") + tuple(
    f"{d}_{p}" for d in ("up", "down") for p in PARTS)


def _merge_step(recs: list[dict], totals: dict) -> dict:
    row = {"step": recs[0]["step"],
           "train_loss": float(np.mean([r["train_loss"] for r in recs]))}
    for k in ("test_loss", "test_accuracy", "test_objective"):
        if recs[0].get(k) is not None:
            row[k] = recs[0][k]
    for k in ("bytes_up", "bytes_down", "packets_up", "packets_down", "retransmissions",
              *ACCOUNT_KEYS):
        row[k] = int(sum(r.get(k, 0) for r in recs))
    row["comm_s"] = float(max(r.get("comm_s", 0.0) for r in recs))
    row["step_s"] = float(max(r.get("step_s", 0.0) for r in recs))
    for k in ("bytes_up", "bytes_down", "retransmissions"):
        totals[k] += row[k]
    totals["bytes_total"] = totals["bytes_up"] + totals["bytes_down"]
    row["bytes_total"] = totals["bytes_total"]
    return row


def _epoch_line(step: int, spe: int, row: dict, totals: dict) -> str:
    acc = row.get("test_accuracy")
    acc_s = f"  accuracy {acc:.3f}" if acc is not None else \
        (f"  f-f* {row['test_loss']:.3g}" if row.get("test_loss") is not None else "")
    return (f"epoch {step / spe:5.1f} (step {step}): loss {row['train_loss']:.4f}{acc_s}  "
            f"up {totals['bytes_up'] / 1e6:.2f} MB  down {totals['bytes_down'] / 1e6:.2f} MB  "
            f"retransmissions {totals['retransmissions']}")


def steps_to_target(records: list[dict], target: float, key: str = "test_accuracy",
                    higher: bool = True) -> tuple[int | None, int | None]:
    """First step (and cumulative bytes there) where `key` reaches the target."""
    for r in records:
        v = r.get(key)
        if v is not None and (v >= target if higher else v <= target):
            return r["step"], r["bytes_total"]
    return None, None


def summarize(records, cfg, n, label, model_hash_, final) -> dict:
    last = records[-1] if records else {}
    s = {"compressor": cfg.compressor, "path": label, "workers": n, "steps": len(records),
         "final_train_loss": last.get("train_loss"),
         "bytes_up": sum(r["bytes_up"] for r in records),
         "bytes_down": sum(r["bytes_down"] for r in records),
         "packets_up": sum(r.get("packets_up", 0) for r in records),
         "packets_down": sum(r.get("packets_down", 0) for r in records),
         "retransmissions": sum(r["retransmissions"] for r in records),
         "model_hash": model_hash_}
    s["bytes_total"] = s["bytes_up"] + s["bytes_down"]
    for k in ACCOUNT_KEYS:
        s[k] = sum(r.get(k, 0) for r in records)
    s.update(per_element(s, n))
    if final:
        s.update({f"final_test_{k}": v for k, v in final.items()})
    return s


def gossip_metrics(model, data, recs: list[dict]) -> dict:
    """Metrics of a decentralized step from the workers' models (records with "params"):
    accuracy and loss of the averaged model (test_*), of each worker (mean and worst), and the
    consensus distance, the mean squared distance of the workers' models to their average."""
    from worker.train import decode_params
    models_ = [decode_params(r.pop("params")) for r in recs if "params" in r]
    if len(models_) != len(recs):
        return {}
    X = np.stack(models_).astype(np.float64)
    avg = X.mean(0)
    ev = model.evaluate(avg.astype(np.float32), data.X_test, data.y_test)
    out = {("test_" + k): v for k, v in ev.items()}
    key = "accuracy" if "accuracy" in ev else "loss"
    per = [r.get("test_" + key) for r in recs]
    out[f"worker_{key}_mean"] = float(np.mean(per))
    out[f"worker_{key}_worst"] = float(min(per) if key == "accuracy" else max(per))
    out["consensus_distance"] = float(((X - avg) ** 2).sum(1).mean())
    for r in recs:              # the merged row takes these instead of worker 0's values
        for k in ev:
            r.pop("test_" + k, None)
    return out
def per_element(s: dict, n: int) -> dict:
    """Bits per element each way (everything sent, and the element payload alone) and bits per
    iteration from one worker (the poster's worker -> master measure: one copy of the
    compressed gradient, no protocol overhead; and everything the worker sent)."""
    el, steps = s.get("elements", 0), s.get("steps", 0)
    if not el or not steps:
        return {}
    return {"bits_per_element_up": round(8 * s["bytes_up"] / el, 2),
            "bits_per_element_down": round(8 * s["bytes_down"] / el, 2),
            "payload_bits_per_element_up": round(8 * s["up_payload"] / el, 2),
            "payload_bits_per_element_down": round(8 * s["down_payload"] / el, 2),
            "payload_bits_per_iteration_up": round(s["payload_bits_up"] / (steps * n), 1),
            "bits_per_iteration_up": round(8 * s["bytes_up"] / (steps * n), 1)}
