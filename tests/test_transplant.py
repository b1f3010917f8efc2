"""Hidden-state transplant verification on a tiny random Llama: transplanting a pass's own states changes nothing,
other states change the logits only from the first transplanted token on, gradients reach pass 1 unless detached,
and the masked ablation leaves no candidate identifier in any argument."""
import dataclasses
import json
import re

import pytest
import torch

from cotlab.config import ConfigError
from cotlab.methods.transplant import TransplantConfig
from cotlab.teacher import TeacherConfig
from cotlab.data.candidates import make_candidates, oracle_candidates
from cotlab.data.sources import load_task
from cotlab.formats import _ARGUED
from cotlab.methods import transplant as T
from cotlab.teacher import Teacher


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Oracle candidates for GSM8K and SVAMP (shipped), train and test splits."""
    teacher = Teacher(TeacherConfig(), cache_dir=tmp_path_factory.mktemp("cache"),
                      oracle=lambda r: oracle_candidates(r.example, r.context))
    out = {}
    for task in ("gsm8k", "svamp"):
        splits = load_task(task, {"source": task}, 24, 12, seed=0)
        out[task] = [row for split in ("train", "test")
                     for row in make_candidates(splits[split], teacher, 0, 0.5, "random", task)[0]]
    return out


@pytest.fixture
def model(actor):
    # float32: the identity checks below are exact to 1e-5, which bf16 rounding (the default on CPUs with native
    # bf16) cannot meet; the upcast of the bf16 base is lossless.
    return actor[0].float()


def own_states_item(item: T.ChoiceItem) -> T.ChoiceItem:
    """Pass 1 = pass 2's own prefix up to each explanation's end: its states there are pass 2's own."""
    return dataclasses.replace(item, solve=[item.choice[:span.stop] for span in item.choice_spans],
                               solve_spans=list(item.choice_spans))


def test_both_passes_hold_each_explanation_as_the_same_tokens(tokenizer, rows):
    for row in rows["gsm8k"][:6] + rows["svamp"][:6]:
        item = T.build_item(tokenizer, row)
        for c, label in enumerate(T.LABELS):
            explanation = [item.choice[t] for t in item.choice_spans[c]]
            assert explanation == [item.solve[c][t] for t in item.solve_spans[c]]
            assert tokenizer.decode(explanation) == row["candidates"][label]
        assert tokenizer.decode(item.choice).endswith(T.TRANSPLANT_CUE)
        assert T.LABELS[item.correct] == row["correct"] and T.LABELS[item.argued] == row["argued"]


@pytest.mark.parametrize("residual_fp64", [False, True])
def test_transplanting_a_pass_own_states_changes_nothing(model, tokenizer, rows, residual_fp64):
    # Three items of different lengths in one batch: padding in both passes is exercised too.
    items = [own_states_item(T.build_item(tokenizer, row)) for row in rows["gsm8k"][:3]]
    config = TransplantConfig(residual_fp64=residual_fp64)
    with torch.no_grad():
        hooked = T.choice_logits(model, tokenizer, items, config, logits_to_keep=0)
        plain = T.choice_logits(model, tokenizer, items, dataclasses.replace(config, transplant=False), 0)
        fp32 = T.choice_logits(model, tokenizer, items, TransplantConfig(transplant=False), 0)
    width = plain.size(1)
    for b, item in enumerate(items):
        real = slice(width - len(item.choice), width)  # left padding
        torch.testing.assert_close(hooked[b, real], plain[b, real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(plain[b, real], fp32[b, real], atol=1e-4, rtol=1e-4)


def test_fp64_residual_stream_keeps_float64_states(model, tokenizer, rows):
    item = T.build_item(tokenizer, rows["gsm8k"][0])
    seen = {}

    def keep(layer, hidden):
        seen[layer] = hidden.dtype
        return hidden

    ids = torch.tensor([item.choice])
    with torch.no_grad(), T.hooked(model, [0, 1], keep, residual_fp64=True):
        logits = model(input_ids=ids).logits
    assert seen == {0: torch.float64, 1: torch.float64} and logits.dtype == torch.float32
    with torch.no_grad(), T.hooked(model, [0, 1], keep):
        model(input_ids=ids)
    assert seen == {0: torch.float32, 1: torch.float32}


@pytest.mark.parametrize("layers", ["all", [0]])
def test_other_states_change_logits_only_from_the_first_transplanted_token(model, tokenizer, rows, layers):
    item = T.build_item(tokenizer, rows["gsm8k"][1])
    config = TransplantConfig(layers=layers)
    with torch.no_grad():
        moved = T.choice_logits(model, tokenizer, [item], config, logits_to_keep=0)[0]
        plain = T.choice_logits(model, tokenizer, [item], dataclasses.replace(config, transplant=False), 0)[0]
    first = item.choice_spans[0].start
    assert torch.equal(moved[:first], plain[:first])
    changed = (moved - plain).abs().amax(-1)
    assert changed[first] > 1e-4 and changed[-1] > 1e-4
    # Every explanation token's own prediction is pass 1's now, so each of them moved.
    assert (changed[item.choice_spans[0]] > 1e-6).all() and (changed[item.choice_spans[1]] > 1e-6).all()


def test_the_last_layer_alone_cannot_move_the_verdict(model, tokenizer, rows):
    # A layer's output reaches later tokens only through the attention of the layers after it.
    item = T.build_item(tokenizer, rows["gsm8k"][1])
    with torch.no_grad():
        moved = T.choice_logits(model, tokenizer, [item], TransplantConfig(layers=[1]), logits_to_keep=0)[0]
        plain = T.choice_logits(model, tokenizer, [item], TransplantConfig(transplant=False), 0)[0]
    changed = (moved - plain).abs().amax(-1) > 0
    assert changed.nonzero().flatten().tolist() == [*item.choice_spans[0], *item.choice_spans[1]]


@pytest.mark.parametrize("detach", [False, True])
def test_gradients_reach_pass_one_unless_detached(model, tokenizer, rows, detach):
    items = [T.build_item(tokenizer, row) for row in rows["gsm8k"][:2]]
    config = TransplantConfig(detach_pass1=detach)
    first_layer = T.decoder_layers(model)[0]
    outputs = []

    def keep(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.size(0) == 2 * len(items) and hidden.requires_grad:  # pass 1: two rows per item
            hidden.retain_grad()
        outputs.append(hidden)

    handle = first_layer.register_forward_hook(keep)
    try:
        logits = T.verdict_logits(model, tokenizer, items, config, T.identifier_ids(tokenizer))
    finally:
        handle.remove()
    pass_one, pass_two = outputs
    assert pass_one.size(0) == 4 and pass_two.size(0) == 2
    torch.nn.functional.cross_entropy(logits, torch.tensor([it.correct for it in items])).backward()
    if detach:
        assert not pass_one.requires_grad
    else:
        span = items[0].solve_spans[0]
        assert pass_one.grad is not None and pass_one.grad[0, span].abs().sum() > 0
        # In two layers, layer 1's transplanted output feeds no later layer: the loss reaches pass 1 only through layer
        # 0's kept states, so not at the prompt's positions.
        assert pass_one.grad[0, :span.start].abs().sum() == 0
    lora = [p.grad for n, p in model.named_parameters() if "lora_A" in n and "layers.0." in n]
    assert all(g is not None and torch.isfinite(g).all() for g in lora)


@pytest.mark.parametrize("task", ["gsm8k", "svamp"])
def test_masked_ablation_leaves_no_candidate_identifier(tokenizer, rows, task):
    assert len(rows[task]) >= 20
    for row in rows[task]:
        assert T.identifiers_in(row["argument"])  # the oracle's arguments do name the candidates
        masked = T.build_item(tokenizer, row, masked=True)
        text = tokenizer.decode(masked.choice)
        argument = text[text.index("Argument:\n") + len("Argument:\n"):text.index("\n\nWhich candidate is correct?")]
        assert argument == T.mask_identifiers(row["argument"])
        assert T.identifiers_in(argument) == [] and not _ARGUED.search(argument)
        assert not re.search(r"\b[Cc]andidate [AB]\b", argument) and "Candidate _" in argument
        # The explanations, the question and the labels of the candidates themselves are untouched.
        plain = T.build_item(tokenizer, row)
        assert masked.solve == plain.solve and masked.correct == plain.correct and masked.argued == plain.argued
    for written in ("Option A is right, not (B).", "B's total is off, so A is correct.", "I back solution b."):
        assert T.identifiers_in(written) and T.identifiers_in(T.mask_identifiers(written)) == []
    assert T.mask_identifiers("A farmer has 3 cows.") == "A farmer has 3 cows."


@pytest.mark.parametrize("variant", [{}, {"masked": True}, {"transplant": False}, {"residual_fp64": True}])
def test_training_moves_only_the_adapter_and_logs_curves(model, tokenizer, rows, variant):
    config = TransplantConfig(steps=4, batch_size=2, eval_every=2, lr=1e-2, **{k: v for k, v in variant.items()
                                                                                 if k != "masked"})
    items = [T.build_item(tokenizer, row, masked=variant.get("masked", False)) for row in rows["svamp"]]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics, curve, eval_curve = T.train(model, tokenizer, items[:8], {"train": items[:4], "test": items[8:12]},
                                         config, seed=0, eval_batch_size=4)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert [r["step"] for r in curve] == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(r["loss"])) for r in curve)
    assert [r["step"] for r in eval_curve] == [0, 2, 4]
    for row in eval_curve:
        for split in ("train", "test"):
            assert 0 <= row[f"{split}_accuracy"] <= 1 and 0 <= row[f"{split}_follows_argument_rate"] <= 1
    # The argument's own correctness rate is a property of the items, the same at every point.
    assert len({r["test_argument_correct_rate"] for r in eval_curve}) == 1
    assert metrics["steps"] == 4 and metrics["last.test_accuracy"] == eval_curve[-1]["test_accuracy"]


def test_final_metrics_pair_the_verdict_against_following_the_argument(model, tokenizer, rows):
    items = [T.build_item(tokenizer, row) for row in rows["svamp"][:12]]
    predictions = T.predict(model, tokenizer, items, TransplantConfig(), batch_size=5)
    assert [p["id"] for p in predictions] == [it.id for it in items]
    for p, it in zip(predictions, items):
        assert p["correct"] == (p["pred"] == p["gold"]) and p["follows_argument"] == (p["pred"] == p["argued"])
        assert p["argument_correct"] == (it.argued == it.correct)
    metrics = T.final_metrics(predictions)
    n_right = sum(p["argument_correct"] for p in predictions)
    assert metrics["argument_correct_rate"] == n_right / 12
    assert metrics["argument_correct_rate_ci_low"] <= metrics["argument_correct_rate"] <= metrics["argument_correct_rate_ci_high"]
    assert metrics["accuracy_vs_argument"] == pytest.approx(metrics["accuracy"] - n_right / 12)
    assert 0 < metrics["accuracy_vs_argument_mcnemar_p"] <= 1


def test_layers_the_model_lacks_are_a_config_error(model, tokenizer, rows):
    item = T.build_item(tokenizer, rows["svamp"][0])
    with pytest.raises(ConfigError, match="transplant.layers"):
        T.choice_logits(model, tokenizer, [item], TransplantConfig(layers=[0, 7]))


def test_a_rate_over_no_rows_is_null_not_nan():
    """A small sample where every argument is right has no accuracy-when-the-argument-is-wrong: None (null in the
    metrics JSON, skipped by MLflow), never NaN."""
    from cotlab.methods.transplant import summary

    rows = [{"correct": c, "argument_correct": True, "follows_argument": c, "p_correct": 0.8 if c else 0.3}
            for c in (True, True, False)]
    metrics = summary(rows)
    assert metrics["accuracy_argument_wrong"] is None
    assert metrics["accuracy"] == metrics["accuracy_argument_right"] == 2 / 3
    assert json.dumps(metrics, allow_nan=False)
