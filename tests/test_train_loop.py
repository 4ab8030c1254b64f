"""What the trainer does per step besides training (training/trainer.py): numbers read from the
device a step late report exactly what transformers' own logging reports, in the same order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_project

from slothctl import config
from slothctl.training import trainer as trainer_mod
from slothctl.training.run import train

# 9 training rows, 2 per micro-batch, 2 micro-batches per step: an epoch every 3 steps. Logged at
# steps 1, 2 and 4 (one log sums steps 3 and 4), evaluated and saved at step 3 and at the end, step 5,
# which is not a logging step; epochs end between logs.
LOOP_SETS = ("model.max_seq_length=64", "train.batch_size=2", "train.gradient_accumulation_steps=2",
             "train.max_steps=5", "train.logging_steps=2", "train.eval_steps=3", "train.save_steps=3",
             "data.eval_fraction=0.1", "data.max_rows=10")


def run(project: Path, read_late: bool | None, monkeypatch) -> tuple[list, Path]:
    monkeypatch.setattr(trainer_mod, "READ_LOGS_LATE", read_late)
    events: list = []
    train(config.load(project / "slothctl.toml"), events.append)
    return [e.to_json() for e in events], project / "runs" / project.name


@pytest.mark.slow  # not in CI (./scripts/test -m slow runs these)
def test_numbers_read_a_step_late_are_transformers_numbers_in_the_same_order(tmp_path, embedded_model,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    as_transformers, plain_dir = run(make_project(tmp_path / "plain", *LOOP_SETS), None, monkeypatch)
    late, late_dir = run(make_project(tmp_path / "late", *LOOP_SETS), True, monkeypatch)

    def stream(events):
        return [(e["event"], e.get("step")) for e in events if e["event"] in ("step", "eval", "checkpoint")]

    assert stream(late) == stream(as_transformers) == [
        ("step", 1), ("step", 2), ("eval", 3), ("checkpoint", 3), ("step", 4), ("eval", 5), ("checkpoint", 5)]
    for name in ("loss", "lr", "grad_norm", "eval_loss", "tokens", "epoch"):
        mine = [e.get(name) for e in late if e["event"] in ("step", "eval")]
        theirs = [e.get(name) for e in as_transformers if e["event"] in ("step", "eval")]
        assert mine == pytest.approx(theirs, abs=1e-6), name
    steps = [e for e in late if e["event"] == "step"]
    assert all(e["tokens_per_s"] > 0 and e["elapsed"] > 0 for e in steps)
    assert [e["tokens"] for e in steps] == sorted({e["tokens"] for e in steps})

    def history(run_dir: Path) -> list[dict]:
        state = json.loads((run_dir / "checkpoint-5" / "trainer_state.json").read_text())
        return [{k: v for k, v in entry.items() if "runtime" not in k and "per_second" not in k}
                for entry in state["log_history"]] + [state["total_flos"]]

    assert history(late_dir) == history(plain_dir)  # the checkpoint's trainer state too, FLOPs included
    summaries = [json.loads((d / "summary.json").read_text()) for d in (late_dir, plain_dir)]
    assert summaries[0]["train_tokens"] == summaries[1]["train_tokens"] > steps[-1]["tokens"] > 0  # + step 5
    assert summaries[0]["losses"] == summaries[1]["losses"]


def test_a_batch_without_padding_goes_without_its_mask_and_trains_the_same(embedded_model):
    """MasklessWhenFull drops only an all-ones mask, which changes nothing in causal attention: the
    loss and its gradients are those of the masked batch (it only spares the masked attention kernel)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = trainer_mod.MasklessWhenFull(DataCollatorForLanguageModeling(pad_token_id=0))
    rows = [{"input_ids": [5, 17, 923, 44, 12, 8], "labels": [-100, -100, 923, 44, 12, 8]},
            {"input_ids": [6, 250, 31, 7, 99, 2], "labels": [-100, 250, 31, 7, 99, 2]}]
    full = collate(rows)
    assert "attention_mask" not in full and trainer_mod.count_tokens(full) == 12
    ragged = collate([rows[0], {"input_ids": [6, 250, 31], "labels": [-100, 250, 31]}])
    assert ragged["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert int(trainer_mod.count_tokens(ragged)) == 9

    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    model.train()
    losses, grads = [], []
    for batch in (full, {**full, "attention_mask": torch.ones_like(full["input_ids"])}):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_padding_free_trains_the_rows_that_padded_batches_train(tmp_path, embedded_model, monkeypatch):
    """`batching = "padding_free"` on the hf backend (TRL refused it while given a max_length) trains
    the same rows in the same order as padded batches, to the same losses: the rows are concatenated
    instead of padded, and attention keeps them apart (transformers masks concatenated rows apart by
    their position ids when no attention mask comes with them)."""
    monkeypatch.chdir(tmp_path)
    sets = ("model.max_seq_length=64", "train.batch_size=2", "train.gradient_accumulation_steps=1",
            "train.max_steps=2", "train.logging_steps=1", "train.save_steps=0", "data.eval_fraction=0",
            "data.max_rows=6", "model.dtype=float32")  # bf16 autocast would differ in the last digits
    losses, tokens = {}, {}
    for strategy in ("padded", "padding_free"):
        events: list = []
        project = make_project(tmp_path / strategy, *sets, f"train.batching={strategy}")
        train(config.load(project / "slothctl.toml"), events.append)
        steps = [e.to_json() for e in events if e.kind == "step"]
        losses[strategy] = [e["loss"] for e in steps]
        tokens[strategy] = [e["tokens"] for e in steps]
        assert any(e.kind == "status" and e.message.startswith(f"Batching {strategy}:") for e in events)
    assert len(losses["padded"]) == 2
    assert losses["padding_free"] == pytest.approx(losses["padded"], abs=1e-4)
    assert tokens["padding_free"] == tokens["padded"]  # real tokens, pads not counted
