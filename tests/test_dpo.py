"""DPO (Phase C): each calibration and robust variant equals a direct computation on hand-made log-ratios; the
beta schedule is applied per epoch (read back from the trainer's logs); training changes the LoRA weights."""
import math

import pytest
import torch

from conftest import LORA
from cotlab.methods.dpo import DEFAULT_DPO_SCHEDULE as DEFAULT_SCHEDULE
from cotlab.methods.dpo import DPOPhase, aggregate, pair_losses, phase_at, scheduled_trainer

R_W = [0.3, -1.2, 2.0, 0.1]  # chosen log-ratios  log pi(y_w|x) - log pi_ref(y_w|x)
R_L = [-0.5, 0.4, 1.0, 0.1]  # rejected log-ratios


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def tensors():
    return torch.tensor(R_W, dtype=torch.float64), torch.tensor(R_L, dtype=torch.float64)


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5])
def test_pair_losses_match_the_papers(beta):
    deltas = [w - l for w, l in zip(R_W, R_L)]
    mean = sum(deltas) / len(deltas)
    cal_term = 0.5 * (sum((w - 1 / (2 * beta)) ** 2 for w in R_W) / len(R_W)
                      + sum((l + 1 / (2 * beta)) ** 2 for l in R_L) / len(R_L))
    expected = {
        "none": [-log_sigmoid(beta * d) for d in deltas],
        "batch_mean": [-log_sigmoid(beta * (d - mean)) for d in deltas],
        "cal_dpo": [-log_sigmoid(w - l) + cal_term for w, l in zip(R_W, R_L)],  # one batch-level term
    }
    for calibration, values in expected.items():
        got = pair_losses(*tensors(), beta, calibration)
        assert got.tolist() == pytest.approx(values, rel=1e-12), calibration


def test_robust_aggregates_match_direct_computation():
    losses = torch.tensor([0.2, 1.5, 0.7, 3.0, 0.1, 0.9, 0.4], dtype=torch.float64, requires_grad=True)
    values = losses.tolist()
    assert aggregate(losses, "none")[0].item() == pytest.approx(sum(values) / 7)
    loss, dropped = aggregate(losses, "drop_top", drop_fraction=0.3)  # keeps int(0.7 * 7) = 4: 3 pairs out
    assert dropped == 3 and loss.item() == pytest.approx((0.2 + 0.7 + 0.1 + 0.4) / 4)
    loss.backward()
    assert [g != 0 for g in losses.grad.tolist()] == [True, False, True, False, True, False, True]  # 1.5, 3.0, 0.9
    for dr_beta in (0.5, 1.0, 4.0):
        expected = -dr_beta * math.log(sum(math.exp(-v / dr_beta) for v in values) / 7)
        assert aggregate(losses, "dr_dpo", dr_beta=dr_beta)[0].item() == pytest.approx(expected, rel=1e-12)


def test_unknown_variants_are_named():
    with pytest.raises(ValueError, match="calibration 'cal'"):
        pair_losses(*tensors(), 0.1, "cal")
    with pytest.raises(ValueError, match="robust 'drop'"):
        aggregate(torch.ones(3), "drop")


def test_schedule_by_epoch():
    betas = [phase_at(DEFAULT_SCHEDULE, e) for e in (0.0, 0.99, 1.0, 2.5, 3.0, 3.9, 7.0)]
    assert [p.beta for p in betas] == [0.05, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert [p.calibration for p in betas] == ["none"] * 2 + ["cal_dpo"] * 5  # batch_mean cannot fall below log 2
    assert [p.robust for p in betas] == ["none"] * 4 + ["drop_top"] * 3


def test_params_yaml_runs_the_default_schedule():
    from dataclasses import asdict
    from pathlib import Path

    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert params["dpo"]["schedule"] == [asdict(phase) for phase in DEFAULT_SCHEDULE]


def test_batch_mean_has_a_log_2_floor_and_cal_dpo_has_none():
    """batch_mean centres the gaps, which then sum to zero; -log sigmoid is convex, so by Jensen the batch's mean
    loss is >= -log sigmoid(0) = log 2, equal when all gaps are equal. Cal-DPO's falls towards 0 once the log-ratios
    reach their targets +-1/(2 beta); and training the log-ratios directly drives it there, not batch_mean's."""
    g = torch.Generator().manual_seed(0)
    for beta in (0.05, 0.1, 1.0):
        for n in (2, 3, 8, 33):
            for _ in range(50):
                r_w, r_l = torch.randn(2, n, generator=g, dtype=torch.float64) * 10
                assert pair_losses(r_w, r_l, beta, "batch_mean").mean().item() >= math.log(2) - 1e-12
            equal = torch.full((n,), 3.0, dtype=torch.float64)
            assert pair_losses(equal, -equal, beta, "batch_mean").mean().item() == pytest.approx(math.log(2), 1e-12)
        target = torch.full((4,), 1 / (2 * beta), dtype=torch.float64)
        at_target = pair_losses(target, -target, beta, "cal_dpo").mean().item()
        assert at_target == pytest.approx(-log_sigmoid(1 / beta), rel=1e-9) and at_target < 0.5 * math.log(2)
    final = {}
    for calibration in ("batch_mean", "cal_dpo"):
        r = torch.zeros(2, 8, dtype=torch.float64, requires_grad=True)  # r_w, r_l, starting at the reference
        optimizer = torch.optim.Adam([r], lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            loss = pair_losses(r[0], r[1], 0.1, calibration).mean()
            loss.backward()
            optimizer.step()
        final[calibration] = (loss.item(), (r[0] - r[1]).min().item())
    assert final["batch_mean"][0] >= math.log(2) - 1e-12 and final["batch_mean"][1] > 5  # margins grew, loss did not
    assert final["cal_dpo"][0] < 0.05 and final["cal_dpo"][1] > 5  # trained: every margin large, the loss near 0


@pytest.mark.parametrize("calibration,robust", [("none", "none"), ("batch_mean", "drop_top"),
                                                ("cal_dpo", "dr_dpo")])
def test_training_follows_the_schedule_and_changes_lora(tiny_base, examples, calibration, robust, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig

    from cotlab.models import load_for_training
    from cotlab.prompts import render_prompt

    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    rows = [{"prompt": render_prompt(tokenizer, ex, "direct"),
             "chosen": f"The answer is: {ex.answer.capitalize()}{tokenizer.eos_token}",
             "rejected": f"The answer is: {'No' if ex.answer == 'yes' else 'Yes'}{tokenizer.eos_token}"}
            for ex in examples["train"][:16]]
    schedule = [DPOPhase(1, 0.05, "none", "none"), DPOPhase(1, 0.2, calibration, robust)]
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    args = DPOConfig(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=5e-3,
                     logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                     gradient_checkpointing=False)
    trainer = scheduled_trainer(schedule)(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                          processing_class=tokenizer)
    trainer.train()
    logs = [r for r in trainer.state.log_history if "beta" in r]
    assert [r["beta"] for r in logs] == [0.05, 0.05, 0.2, 0.2]  # 2 steps per epoch
    assert all(math.isfinite(r["loss"]) for r in logs)
    assert [r["pairs_dropped"] for r in logs] == [0, 0, *([2, 2] if robust == "drop_top" else [0, 0])]  # 8 - int(6.8)
    # Cal-DPO's calibration term is logged apart: 1/2 (t^2 + t^2) = t^2 = 6.25 at the reference (t = 1 / (2 * 0.2))
    calibration_terms = [r["calibration_term"] for r in logs]
    if calibration == "cal_dpo":
        assert calibration_terms[:2] == [0.0, 0.0] and 4.0 < calibration_terms[2] < 8.0
        assert all(r["loss"] > r["calibration_term"] for r in logs)
    else:
        assert calibration_terms == [0.0] * 4
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)  # every trained LoRA matrix moved
    # TRL keeps the starting adapter as a frozen "ref" copy: the reference never moves.
    ref = {n: p for n, p in after.items() if ".ref." in n}
    assert ref and all(not p.requires_grad for p in ref.values())
    assert all(torch.equal(p, before[n.replace(".ref.", ".default.")]) for n, p in ref.items())


def test_dpo_train_on_pairs_from_filtered_examples(tiny_base, examples):
    from dataclasses import replace

    from cotlab.data.pairs import build_pairs
    from cotlab.methods.dpo import DPOConfig, train
    from cotlab.models import load_for_training

    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    drafts = ["Answer: Yes - it is.", "Answer: No - it is not.", "hmm, unsure"]
    filtered = [replace(ex, metadata={**ex.metadata, "draft": drafts[i % 3]}) for i, ex in enumerate(examples["train"][:12])]
    pairs, metrics = build_pairs(filtered, tokenizer, seed=0)
    assert metrics["n_pairs"] == 12 and metrics["made.draft_wrong"] + metrics["made.flipped"] == 12
    wrong_drafts = [p for p in pairs if p["made"] == "draft_wrong"]
    assert wrong_drafts  # their sides share one template: test_every_pair_differs_only_in_its_conclusion
    assert all("Student draft: " in p["prompt"] and p["chosen"] != p["rejected"] for p in pairs)
    config = DPOConfig(schedule=[DPOPhase(1, 0.1, "none", "none"), DPOPhase(1, 0.1, "cal_dpo", "dr_dpo")],
                       lr=5e-3, batch_size=6)
    from cotlab.data.pairs import heldout_examples

    test, _ = heldout_examples(examples["test"], {ex.id: drafts[i % 3] for i, ex in enumerate(examples["test"])})
    heldout, _ = build_pairs(test, tokenizer, seed=0)
    model, metrics, curve = train(model, tokenizer, pairs, config, max_length=512, seed=0, heldout_pairs=heldout)
    assert metrics["train_steps"] == 4 and math.isfinite(metrics["train_loss"])
    assert metrics["heldout.n_pairs"] == len(heldout) == 8 and metrics["heldout.beta"] == 0.1
    for key in ("preference_accuracy", "policy_logprob_accuracy", "start_logprob_accuracy"):
        assert metrics[f"heldout.{key}_ci_low"] <= metrics[f"heldout.{key}"] <= metrics[f"heldout.{key}_ci_high"]
        assert 0 <= metrics[f"heldout.{key}_ci_low"] and metrics[f"heldout.{key}_ci_high"] <= 1
    assert math.isfinite(metrics["heldout.mean_margin"]) and 0 <= metrics["heldout.logprob_accuracy_mcnemar_p"] <= 1
    assert "ref" not in model.peft_config  # scored before the reference copy goes
    assert [row["beta"] for row in curve] == [0.1] * 4 and [row["step"] for row in curve] == [1, 2, 3, 4]


def _trainer(tiny_base, examples, tmp_path, reference="start"):
    from datasets import Dataset
    from trl import DPOConfig

    from cotlab.models import load_for_training
    from cotlab.prompts import render_prompt

    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    rows = [{"prompt": render_prompt(tokenizer, ex, "direct"),
             "chosen": f"The answer is: {ex.answer.capitalize()}{tokenizer.eos_token}",
             "rejected": f"Well, maybe. The answer is: {'No' if ex.answer == 'yes' else 'Yes'}{tokenizer.eos_token}"}
            for ex in examples["train"][:4]]
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                     save_strategy="no", disable_tqdm=True, gradient_checkpointing=False)
    trainer = scheduled_trainer([DPOPhase()])(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                              processing_class=tokenizer)
    return model, trainer


def test_sequence_logps_equal_a_direct_computation(tiny_base, examples, tmp_path):
    model, trainer = _trainer(tiny_base, examples, tmp_path)
    with torch.no_grad():
        for name, p in model.named_parameters():  # a non-zero adapter, so the policy differs from the base
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        chosen, rejected = trainer._sequence_logps(model, batch)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    direct = (logprobs * batch["completion_mask"][:, 1:]).sum(dim=1)
    assert torch.allclose(torch.cat([chosen, rejected]), direct, atol=1e-4)
    assert batch["completion_mask"][:, 1:].sum(dim=1).min() > 0


@pytest.mark.parametrize("reference", ["start", "base"])
def test_the_reference_is_the_starting_adapter_or_the_base(tiny_base, examples, tmp_path, reference):
    """`start` keeps a frozen copy of the adapter DPO starts from (log-ratios start at 0); `base` disables it."""
    from dataclasses import replace

    from cotlab.data.pairs import build_pairs
    from cotlab.methods.dpo import DPOConfig, train
    from cotlab.models import load_for_training

    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained-looking starting adapter (fresh LoRA B is zero: policy == base)
                p.add_(0.05 * torch.randn_like(p))
    filtered = [replace(ex, metadata={**ex.metadata, "draft": "Answer: Yes - sure."}) for ex in examples["train"][:8]]
    pairs, _ = build_pairs(filtered, tokenizer, seed=0)
    config = DPOConfig(schedule=[DPOPhase(1, 0.1)], lr=1e-3, batch_size=8, reference=reference)
    model, metrics, curve = train(model, tokenizer, pairs, config, max_length=512, seed=0)
    first_margin = curve[0]["reward_margin"]
    if reference == "start":
        assert first_margin == pytest.approx(0.0, abs=1e-6) and curve[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    else:
        assert abs(first_margin) > 1e-4
    assert "ref" not in model.peft_config  # the checkpoint holds the trained adapter only


def test_heldout_pairs_hold_the_test_drafts_and_the_oracle_teachers_reasoning(tokenizer, examples):
    """Test pairs are built as the train pairs are: the chosen reasoning is exactly what the oracle teacher's reply
    leaves after filtering (parse_teacher), the prompt shows the test draft; no reasoning, no pair."""
    from dataclasses import replace

    from cotlab.data.pairs import build_pairs, heldout_examples
    from cotlab.formats import parse_teacher
    from cotlab.teacher import oracle_teacher

    test = [*examples["test"], replace(examples["test"][0], id="bare", reasoning="")]
    drafts = {ex.id: "Answer: Yes - it is." for ex in test[::2]}
    kept, dropped = heldout_examples(test, drafts)
    assert dropped == {"dropped.no_reasoning": 1} and [ex.id for ex in kept] == [ex.id for ex in examples["test"]]
    for ex, original in zip(kept, examples["test"]):
        teacher = parse_teacher(oracle_teacher(original, drafts.get(ex.id, "")), ex.answer_type)
        assert ex.reasoning == teacher.reasoning and ex.reasoning.startswith("1. ")
        assert ex.metadata["draft"] == drafts.get(ex.id, "")
    pairs, metrics = build_pairs(kept, tokenizer, seed=0)
    assert metrics["n_pairs"] == len(kept)
    assert all(p["chosen"].startswith(ex.reasoning) for p, ex in zip(pairs, kept))
    assert all("Student draft: Answer: Yes - it is." in p["prompt"] for p in pairs[::2])


def test_every_pair_differs_only_in_its_conclusion(tokenizer, examples):
    """Chosen and rejected share one template, the teacher's reasoning then "The answer is: X": both sides' lines
    above the answer line are exactly the reasoning the teacher wrote (as parse_teacher left it), and only the final
    answer differs, chosen right and rejected wrong (the draft's own answer when the draft is wrong). A rejected side
    in another format (the raw draft, "Answer: No - ...") would let a model tell the sides apart by format alone."""
    from dataclasses import replace

    from cotlab.answers import extract_answer, is_correct
    from cotlab.data.pairs import build_pairs, heldout_examples
    from cotlab.formats import parse_draft

    def with_drafts(exs, drafts, **change):
        return [replace(ex, **change, metadata={**ex.metadata, "draft": drafts[i % len(drafts)]})
                for i, ex in enumerate(exs)]

    yes_no = ["Answer: Yes - it is.\nQuestions: Is it? Why?", "Answer: No - it is not.", "I would say no.", "", "hmm"]
    train = examples["train"]
    test, _ = heldout_examples(examples["test"], {ex.id: yes_no[i % 5] for i, ex in enumerate(examples["test"])})
    sets = [with_drafts(train, yes_no), test,
            [replace(ex, answer=str(10 + i)) for i, ex in enumerate(with_drafts(
                train[:8], ["Answer: 10 - ten.", "Answer: 7 - seven.", "", "It is 99."], answer_type="number"))],
            with_drafts(train[:8], ["Answer: C - no.", "Answer: B - yes.", "Answer: A"], answer_type="choice",
                        answer="B", choices=["A) x", "B) y", "C) z"])]
    made = []
    for exs in sets:
        pairs, _ = build_pairs(exs, tokenizer, seed=0)
        for pair, ex in zip(pairs, exs, strict=True):
            sides = {}
            for side in ("chosen", "rejected"):
                assert pair[side].endswith(tokenizer.eos_token)
                *body, last = pair[side].removesuffix(tokenizer.eos_token).split("\n")
                assert "\n".join(body) == ex.reasoning.strip() and body, (side, pair[side])  # the teacher's lines
                assert last.startswith("The answer is: "), (side, pair[side])
                sides[side] = extract_answer(last, ex.answer_type, strict=True)
            assert is_correct(sides["chosen"], ex.answer, ex.answer_type)
            assert sides["rejected"] is not None and not is_correct(sides["rejected"], ex.answer, ex.answer_type)
            draft = parse_draft(ex.metadata["draft"], ex.answer_type)
            drafted = draft.answer if draft.ok else draft.answer_flexible
            if pair["made"] == "draft_wrong":
                assert sides["rejected"] == drafted  # the draft's wrong answer, in the teacher's template
            else:
                assert pair["made"] == "flipped" and (drafted is None or is_correct(drafted, ex.answer, ex.answer_type))
            made.append((ex.answer_type, pair["made"]))
    assert {(t, m) for t in ("yes_no", "number", "choice") for m in ("draft_wrong", "flipped")} <= set(made)


def test_preference_metrics_match_a_hand_computation():
    from cotlab.evaluation.stats import wilson_interval
    from cotlab.methods.dpo import preference_metrics

    logps = {"policy_chosen": torch.tensor([-1.0, -5.0, -2.0, -3.0]), "policy_rejected": torch.tensor([-2.0, -4.0, -2.5, -1.0]),
             "reference_chosen": torch.tensor([-1.5, -4.0, -2.0, -3.5]), "reference_rejected": torch.tensor([-1.5, -4.5, -2.0, -1.0]),
             "start_chosen": torch.tensor([-3.0, -1.0, -1.0, -1.0]), "start_rejected": torch.tensor([-2.0, -2.0, -2.0, -2.0])}
    m = preference_metrics(logps, beta=0.5, made=["flipped", "draft_wrong", "flipped", "flipped"])
    # Delta = (pc - rc) - (pr - rr): 0.5 - (-0.5) = 1; -1 - 0.5 = -1.5; 0 - (-0.5) = 0.5; 0.5 - 0 = 0.5
    assert m["mean_margin"] == pytest.approx(0.5 * (1 - 1.5 + 0.5 + 0.5) / 4)
    assert m["chosen_reward"] == pytest.approx(0.5 * (0.5 - 1 + 0 + 0.5) / 4)
    assert m["preference_accuracy"] == 0.75 and m["n_pairs"] == 4 and m["beta"] == 0.5
    assert (m["preference_accuracy_ci_low"], m["preference_accuracy_ci_high"]) == pytest.approx(wilson_interval(3, 4))
    assert m["policy_logprob_accuracy"] == 0.5 and m["start_logprob_accuracy"] == 0.75  # pairs 1, 3 and 2, 3, 4
    assert (m["logprob_pairs_gained"], m["logprob_pairs_lost"]) == (1, 2)  # pair 1 gained; 2 and 4 lost
    assert m["logprob_accuracy_gain"] == pytest.approx(-0.25) and m["logprob_accuracy_mcnemar_p"] == 1.0
    assert m["by_made.flipped.n_pairs"] == 3 and m["by_made.flipped.preference_accuracy"] == 1.0
    assert m["by_made.draft_wrong.preference_accuracy"] == 0.0
    # per kind, the trained policy next to its start: flipped = pairs 1, 3, 4 (policy wins 1, 3; start 3, 4; McNemar
    # b = c = 1), draft_wrong = pair 2 (start only)
    assert m["by_made.flipped.mean_margin"] == pytest.approx(0.5 * (1 + 0.5 + 0.5) / 3)
    assert m["by_made.flipped.policy_logprob_accuracy"] == m["by_made.flipped.start_logprob_accuracy"] == 2 / 3
    assert m["by_made.flipped.logprob_accuracy_mcnemar_p"] == 1.0
    assert m["by_made.draft_wrong.mean_margin"] == pytest.approx(0.5 * -1.5)
    assert (m["by_made.draft_wrong.policy_logprob_accuracy"], m["by_made.draft_wrong.start_logprob_accuracy"]) == (0, 1)
    no_start = preference_metrics({k: v for k, v in logps.items() if not k.startswith("start")}, 0.5, ["a"] * 4)
    assert no_start["by_made.a.policy_logprob_accuracy"] == 0.5 and "by_made.a.start_logprob_accuracy" not in no_start


def _completion_logp(model, tokenizer, prompt: str, completion: str) -> float:
    """log pi(completion | prompt) by one plain forward pass, the completion starting where the tokenized prompt
    and prompt+completion diverge (as TRL splits them)."""
    prompt_ids, ids = tokenizer(prompt)["input_ids"], tokenizer(prompt + completion)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), min(len(prompt_ids), len(ids)))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    return float(logprobs[start - 1:].sum())


@pytest.mark.parametrize("reference", ["start", "base"])
def test_heldout_metrics_match_a_hand_computation_on_a_tiny_model(tiny_base, examples, tmp_path, reference):
    """The held-out margins equal beta * Delta from plain forward passes of the policy and of the reference (a copy
    of the starting adapter, or the base); pairs oriented by the hand margins score 1.0, reversed 0.0."""
    import copy

    from datasets import Dataset
    from trl import DPOConfig

    from cotlab.methods.dpo import heldout_metrics
    from cotlab.models import load_for_training
    from cotlab.prompts import render_prompt

    torch.manual_seed(0)
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)

    def perturb():
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name and ".default." in name:
                    p.add_(0.05 * torch.randn_like(p))

    perturb()  # a starting adapter that differs from the base, so start and base references differ
    start_model = copy.deepcopy(model)
    eos = tokenizer.eos_token
    pairs = [{"prompt": render_prompt(tokenizer, ex, "direct"), "chosen": f"The answer is: {ex.answer.capitalize()}{eos}",
              "rejected": f"Well, maybe. The answer is: {'No' if ex.answer == 'yes' else 'Yes'}{eos}",
              "made": "flipped" if i % 2 else "draft_wrong"} for i, ex in enumerate(examples["test"])]
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                     save_strategy="no", disable_tqdm=True, gradient_checkpointing=False, bf16=False)  # as train()
    trainer = scheduled_trainer([DPOPhase()], reference=reference)(
        model=model, args=args, train_dataset=Dataset.from_list(pairs[:4]), processing_class=tokenizer)
    perturb()  # the "trained" policy: the "ref" copy keeps the starting adapter

    def hand(side):
        policy = [_completion_logp(model, tokenizer, p["prompt"], p[side]) for p in pairs]
        start = [_completion_logp(start_model, tokenizer, p["prompt"], p[side]) for p in pairs]
        if reference == "base":
            with start_model.disable_adapter():
                return policy, [_completion_logp(start_model, tokenizer, p["prompt"], p[side]) for p in pairs], start
        return policy, start, start

    (pc, rc, sc), (pr, rr, sr) = hand("chosen"), hand("rejected")
    beta = 0.1
    margins = [beta * ((a - b) - (c - d)) for a, b, c, d in zip(pc, rc, pr, rr)]
    assert min(abs(x) for x in margins) > 1e-4  # the policy moved away from the reference on every pair
    got = heldout_metrics(trainer, model, pairs, beta, batch_size=3)  # 8 pairs: batches of 3, 3, 2
    assert got["n_pairs"] == 8 and got["n_dropped_too_long"] == 0
    assert got["mean_margin"] == pytest.approx(sum(margins) / 8, abs=1e-5)
    assert got["preference_accuracy"] == sum(x > 0 for x in margins) / 8
    assert got["policy_logprob_accuracy"] == sum(a > b for a, b in zip(pc, pr)) / 8
    assert got["start_logprob_accuracy"] == sum(a > b for a, b in zip(sc, sr)) / 8
    assert got["by_made.flipped.n_pairs"] == 4 and model.training  # the model's mode is restored
    for i, how in enumerate(("draft_wrong", "flipped")):  # per kind, through heldout_metrics' reordering by length
        kind = range(i, 8, 2)
        assert got[f"by_made.{how}.preference_accuracy"] == sum(margins[j] > 0 for j in kind) / 4
        assert got[f"by_made.{how}.policy_logprob_accuracy"] == sum(pc[j] > pr[j] for j in kind) / 4
        assert got[f"by_made.{how}.start_logprob_accuracy"] == sum(sc[j] > sr[j] for j in kind) / 4

    oriented = [p if x > 0 else {**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p, x in zip(pairs, margins)]
    best = heldout_metrics(trainer, model, oriented, beta, batch_size=8)
    assert best["preference_accuracy"] == 1.0 and best["preference_accuracy_ci_high"] == 1.0
    assert best["mean_margin"] == pytest.approx(sum(abs(x) for x in margins) / 8, abs=1e-5)
    assert best["preference_accuracy_ci_low"] == pytest.approx(0.6756, abs=1e-3)  # Wilson, 8 of 8
    reversed_ = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in oriented]
    assert heldout_metrics(trainer, model, reversed_, beta, batch_size=8)["preference_accuracy"] == 0.0
