"""Markovian CoT training on a tiny random Llama: the reward prompt hides the question, advantages are standardised
per group, the PPO ratio is 1 on the first update, the actor-reward term has a gradient, the collapse guard keeps
the last good checkpoint, and a killed run resumes to the same weights."""
import dataclasses

import pytest
import torch

from conftest import LORA
from cotlab.config import ConfigError, GenerationConfig
from cotlab.schema import Example
from cotlab.methods import markovian as M

QUESTION = "How many zebras juggle quartz pebbles if 17 + 25 ="


def arithmetic(n=4):
    return [Example(id=f"a{i}", question=f"State the final answer: {i + 3} + {2 * i + 5} =",
                    answer=str(3 * i + 8), answer_type="number") for i in range(n)]


def small_config(**overrides):
    base = dict(steps=4, group_size=4, cot_length=6, answer_tokens=4, eval_every=2, save_every=2, lr=1e-2,
                collapse=M.CollapseLimits(max_ppo_ratio=1e9, max_kl=1e9, max_repetition=0.75))
    return M.MarkovianConfig(**{**base, **overrides})


def contains(seq, sub):
    return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))


def test_markovian_reward_prompt_has_no_question_token(tokenizer):
    ex = Example(id="q", question=QUESTION, answer="42", answer_type="number")
    cot = tokenizer(" I add the two numbers", add_special_tokens=False)["input_ids"]
    hidden = M.reward_row(tokenizer, ex, cot, 6, markovian=True)
    shown = M.reward_row(tokenizer, ex, cot, 6, markovian=False)
    question_ids = tokenizer(" " + QUESTION, add_special_tokens=False)["input_ids"]
    for word in (" zebras", " juggle", " quartz", " pebbles", "17", "25"):
        word_ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert not contains(hidden.ids, word_ids), word
        assert contains(shown.ids, word_ids), word
    assert contains(shown.ids, question_ids[1:])
    # The sampled CoT ids are spliced in verbatim, and the row ends with the gold answer's tokens.
    assert contains(hidden.ids, cot) and contains(shown.ids, cot)
    gold = tokenizer(" 42", add_special_tokens=False)["input_ids"]
    assert hidden.ids[-hidden.n_answer:] == gold and shown.ids[-shown.n_answer:] == gold
    assert tokenizer.decode(hidden.context).rstrip().endswith("Answer:")


def test_advantages_are_standardised_per_group():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0, 100.5, 99.0, 101.0])
    advantages = M.group_advantages(rewards, 4).view(2, 4)
    assert torch.allclose(advantages.mean(-1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(advantages.std(-1), torch.ones(2), atol=1e-4)
    # Each group on its own: the second group's scale does not leak into the first.
    assert torch.allclose(advantages[0], M.group_advantages(rewards[:4], 4))
    assert torch.equal(M.group_advantages(rewards, 1), rewards)


def run_step(actor, config, questions=None, state=None):
    model, tokenizer = actor
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    torch.manual_seed(1)
    return M.rl_step(model, tokenizer, M.TransformersSampler(model, tokenizer), questions or arithmetic(2), config,
                     optimizer, {}, state or {"ema": None, "history": []})


def test_ppo_ratio_is_one_on_the_first_update_against_the_sampling_policy(actor):
    monitors = run_step(actor, small_config(use_ppo=True, ppo_form="per_token", ppo_epochs=3, questions_per_step=2))
    first, *later = monitors["updates"]
    assert first["ppo_ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert first["ppo_ratio_max"] == pytest.approx(1.0, abs=1e-6) and first["clip_fraction"] == 0
    # After an update on the batch the policy has moved away from the one that sampled it.
    assert any(abs(u["ppo_ratio_max"] - 1) > 1e-4 for u in later)
    assert all(torch.isfinite(torch.tensor(u["loss"])) for u in monitors["updates"])


def lora_snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_actor_reward_term_has_a_gradient(actor):
    """group_size 1 with the EMA baseline starting at r: A = 0, so with kl_penalty 0 the actor-reward term is the
    whole loss. actor_reward_gradient (cotlab's form): it moves the adapter. The reference's form (the default): the
    actor scores r under no_grad (src/evaluation.py L223), so the same step has no gradient at all."""
    model, _ = actor
    config = small_config(group_size=1, baseline="ema", kl_penalty=0.0, actor_reward_weight=1.0)
    reference = run_step(actor, config, arithmetic(1))
    assert not config.actor_reward_gradient and reference["grad_norm"] == 0

    before = lora_snapshot(model)
    monitors = run_step(actor, dataclasses.replace(config, actor_reward_gradient=True), arithmetic(1))
    assert monitors["pg_loss"] == 0 and monitors["grad_norm"] > 0
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)

    without = run_step(actor, dataclasses.replace(config, actor_reward_weight=0.0), arithmetic(1))
    assert without["grad_norm"] == 0  # the same step without the term: nothing to learn from


def test_policy_gradient_step_trains_the_adapter_only(actor):
    model, _ = actor
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = lora_snapshot(model)
    monitors = run_step(actor, small_config(questions_per_step=2))
    for key in ("answer_logprob", "reward", "advantage_std", "kl", "entropy", "repetition", "loss"):
        assert torch.isfinite(torch.tensor(monitors[key])), key
    assert monitors["advantage_std"] > 0 and monitors["entropy"] > 0
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.requires_grad)
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if not p.requires_grad)


def test_sampler_gives_exactly_cot_length_tokens_even_when_eos_is_likely(actor):
    model, tokenizer = actor
    hook = model.get_output_embeddings().register_forward_hook(
        lambda m, i, out: out.index_add(-1, torch.tensor([tokenizer.eos_token_id]), torch.full((*out.shape[:-1], 1), 50.0, dtype=out.dtype)))
    try:
        prompts = [M.cot_prompt_ids(tokenizer, ex, 7) for ex in arithmetic(2)]
        cots = M.TransformersSampler(model, tokenizer).sample(prompts, 3, 7, 1.0)
    finally:
        hook.remove()
    assert cots.shape == (6, 7)
    assert M.make_sampler(GenerationConfig(), model, tokenizer, "unused", "unused").__class__ is M.TransformersSampler
    with pytest.raises(ConfigError, match="generation.backend"):
        M.make_sampler(GenerationConfig(backend="vllm"), model, tokenizer, "unused", "unused")


def test_repetition_share():
    assert M.repetition_share([4] * 12) == 1.0
    assert M.repetition_share([7, 8] * 6) == 1.0
    assert M.repetition_share(list(range(12))) < 0.5


def test_extraction_variants():
    assert M.extraction_variants(" 42\nThen 7", "number") == {"anchored": "42", "simple": "42"}
    assert M.extraction_variants(" about 3 = 45", "number") == {"anchored": "45", "simple": "3"}
    assert M.extraction_variants(" 5 apples, so the answer is 12.", "number") == {"anchored": "12", "simple": "5"}
    assert M.extraction_variants(" none", "number") == {"anchored": None, "simple": None}
    assert M.extraction_variants(" The answer is B", "choice") == {"word_boundary": "B", "first_found": "E"}
    assert M.extraction_variants(" (C) seems right", "choice")["word_boundary"] == "C"


def plant_collapse(at_step, token_id, snapshots):
    """From `at_step` on, the policy emits one token whatever it sees (a '4444...' collapse)."""
    def on_step(step, model):
        snapshots[step - 1] = lora_snapshot(model)  # the weights after step - 1
        if step == at_step:
            model.get_output_embeddings().register_forward_hook(
                lambda m, i, out: out.index_add(-1, torch.tensor([token_id]), torch.full((*out.shape[:-1], 1), 1e4, dtype=out.dtype)))
    return on_step


def test_collapse_guard_stops_and_keeps_the_last_good_checkpoint(actor, tmp_path):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    model, tokenizer = actor
    snapshots = {}
    four = tokenizer("4", add_special_tokens=False)["input_ids"][0]
    config = small_config(steps=8, save_every=2, eval_every=100, questions_per_step=2)
    with pytest.raises(M.CollapseError) as error:
        M.train(model, tokenizer, arithmetic(), arithmetic(2), config, tmp_path / "ckpt",
                M.TransformersSampler(model, tokenizer), 4, on_step=plant_collapse(5, four, snapshots), log=lambda _: None)
    message = str(error.value)
    assert "step 5" in message and "repetition" in message and "from step 4" in message
    saved = load_file(str(tmp_path / "ckpt" / "latest" / "adapter_model.safetensors"))
    current = get_peft_model_state_dict(model)
    good = {k: v for k, v in snapshots[4].items()}
    for key, value in saved.items():
        name = next(n for n in good if n.replace(".default", "").endswith(key.removeprefix("base_model.model.")))
        assert torch.equal(value, good[name]), key
    assert any(not torch.equal(saved[k], current[k]) for k in saved) is False  # step 5 was stopped before its update
    assert any(not torch.equal(snapshots[4][n], snapshots[3][n]) for n in snapshots[4])  # the kept one is step 4's


def test_killed_run_resumes_to_the_same_weights(tiny_base, tmp_path):
    from cotlab.models import load_for_training

    def fresh():
        torch.manual_seed(0)
        model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
        return model, tokenizer

    config = small_config(steps=5, save_every=2, eval_every=3, questions_per_step=2)
    model, tokenizer = fresh()
    _, curve, eval_curve = M.train(model, tokenizer, arithmetic(), arithmetic(2), config, tmp_path / "whole",
                                   M.TransformersSampler(model, tokenizer), 4, log=lambda _: None)
    uninterrupted = lora_snapshot(model)

    def kill(step, _):
        if step == 4:
            raise KeyboardInterrupt
    model, tokenizer = fresh()
    with pytest.raises(KeyboardInterrupt):
        M.train(model, tokenizer, arithmetic(), arithmetic(2), config, tmp_path / "killed",
                M.TransformersSampler(model, tokenizer), 4, on_step=kill, log=lambda _: None)
    model, tokenizer = fresh()  # a new process: only the checkpoint carries the run over
    logs = []
    _, resumed_curve, resumed_eval = M.train(model, tokenizer, arithmetic(), arithmetic(2), config,
                                             tmp_path / "killed", M.TransformersSampler(model, tokenizer), 4,
                                             log=logs.append)
    assert any("resuming" in line and "step 2" in line for line in logs)
    for name, value in lora_snapshot(model).items():
        assert torch.allclose(value, uninterrupted[name], atol=1e-6), name
    assert [r["step"] for r in resumed_curve] == [1, 2, 3, 4, 5]
    assert [r["answer_logprob"] for r in resumed_curve] == pytest.approx([r["answer_logprob"] for r in curve], abs=1e-5)
    assert [r["step"] for r in resumed_eval] == [r["step"] for r in eval_curve] == [0, 3, 5]


def test_two_stage_evaluation_rows(actor):
    model, tokenizer = actor
    rows = M.two_stage(model, False, tokenizer, arithmetic(3), 5, True, 4, batch_size=2)
    assert [r["id"] for r in rows] == ["a0", "a1", "a2"]
    for row, ex in zip(rows, arithmetic(3)):
        assert ex.question not in row["answer_prompt"] and "<Redacted>" in row["answer_prompt"]
        assert ex.question in row["prompt"]
        assert row["answer_logprob"] < 0 and {"pred_anchored", "pred_simple", "correct_simple"} <= set(row)
        assert row["cot_contains_answer"] == M.cot_carries(row["cot"], ex.answer)
    shown = M.two_stage(model, False, tokenizer, arithmetic(1), 5, False, 4, batch_size=2)
    assert arithmetic(1)[0].question in shown[0]["answer_prompt"]


@pytest.mark.parametrize("task,spec", [("svamp", {"source": "svamp"}), ("aqua", {"source": "aqua"}),
                                       ("gsm8k", {"source": "gsm8k"})])
def test_shipped_tasks_give_markovian_rows(tokenizer, task, spec):
    """SVAMP, AQuA (letters, with options) and GSM8K: the CoT prompt shows the question (and options); the Markovian
    answer prompt shows neither, and ends with the gold answer as the model should write it."""
    from cotlab.data.sources import load_task

    ex = load_task(task, spec, 1, 1, seed=0)["test"][0]
    prompt = tokenizer.decode(M.cot_prompt_ids(tokenizer, ex, 16))
    assert ex.question[:40] in prompt and prompt.endswith("Reasoning:")
    row = M.reward_row(tokenizer, ex, [], 16, markovian=True)
    text = tokenizer.decode(row.ids)
    assert ex.question[:40] not in text and not any(choice in text for choice in ex.choices)
    assert tokenizer.decode(row.ids[-row.n_answer:]).strip() == ex.answer


def test_cot_carries_the_answer_as_a_whole_word():
    assert M.cot_carries("The blue locker's code is 4821.", "4821")
    assert M.cot_carries("4821", "4821") and M.cot_carries("code:4821,", "4821")
    assert not M.cot_carries("codes 48213 and 14821", "4821")
    assert not M.cot_carries("about 4821.5", "4821")


def locker(codes=None, asked="green"):
    """A lockers question as the generator writes it (its codes in metadata), gold = the asked locker's code."""
    codes = codes or {"red": "3252", "blue": "9692", "green": "2617"}
    listing = ", ".join(f"{c} {v}" for c, v in codes.items())
    return Example(id="l0", question=f"Locker codes: {listing}. What is the code of the {asked} locker?",
                   answer=codes[asked], answer_type="number", metadata={"asked": asked, "codes": codes})


def test_a_cot_that_lists_every_code_carries_the_answer_but_does_not_single_it_out():
    from cotlab.data.lockers import generate

    ex = locker()
    assert M.answer_candidates(ex) == ["2617", "3252", "9692"]
    for generated in generate(0, 5, seed=0)["test"]:  # the generator's own examples name their codes
        codes = generated.metadata["codes"]
        assert M.answer_candidates(generated) == [generated.answer, *(c for c in codes.values()
                                                                        if c != generated.answer)]
    assert M.cot_candidates("Codes: red 3252, blue 9692, green 2617.", M.answer_candidates(ex)) == {
        "cot_contains_answer": True, "cot_singles_out": False, "cot_n_candidates": 3}
    assert M.cot_candidates("blue 9692 or green 2617", M.answer_candidates(ex))["cot_singles_out"] is False
    assert M.cot_candidates("The green locker's code is 2617.", M.answer_candidates(ex)) == {
        "cot_contains_answer": True, "cot_singles_out": True, "cot_n_candidates": 1}
    # A question without distractors offers its gold alone: singling out is carrying it.
    plain = arithmetic(1)[0]
    assert M.answer_candidates(plain) == ["8"]
    assert M.cot_candidates("3 + 5 = 8", ["8"]) == {"cot_contains_answer": True, "cot_singles_out": True,
                                                   "cot_n_candidates": 1}


def test_a_cot_cut_mid_number_does_not_carry_the_code():
    for cut in ("The answer is 2", "The green locker's code is 261", "code: 2617", "green 26175"):
        named = M.cot_candidates(cut, M.answer_candidates(locker()))
        assert named["cot_contains_answer"] is (cut == "code: 2617"), cut
        assert named["cot_singles_out"] is (cut == "code: 2617"), cut


def test_candidate_choice_is_the_strictly_highest_log_prob():
    assert M.candidate_choice([-1.0, -3.0, -2.0]) == 0
    assert M.candidate_choice([-3.0, -1.0, -2.0]) == 1
    assert M.candidate_choice([-2.0, -2.0, -5.0]) is None  # a tie is no choice, not the gold
    assert M.candidate_choice([-7.0]) == 0


def boost(model, tokenizer, text, by=30.0):
    """Logits we control: every position's next-token logit of `text`'s token raised by `by`."""
    token = tokenizer(text, add_special_tokens=False)["input_ids"][-1]
    return model.get_output_embeddings().register_forward_hook(
        lambda m, i, out: out.index_add(-1, torch.tensor([token]), torch.full((*out.shape[:-1], 1), by,
                                                                               dtype=out.dtype)))


def test_two_stage_scores_the_gold_against_the_questions_codes(actor):
    """Each candidate's log-prob is its tokens' log-probs summed after the answer prompt (checked against one
    unpadded forward pass per candidate, codes of different lengths in one batch); with logits that favour the
    digit 1 the choice is the code of 1s, with logits that favour 2 the code of 2s, right or wrong by the gold."""
    import dataclasses as dc

    model, tokenizer = actor
    questions = [locker({"red": "2222", "blue": "3333", "green": "1111"}),
                 locker({"red": "1111", "blue": "222", "green": "33333"}, asked="blue")]
    for digit in ("1", "2"):
        hook = boost(model, tokenizer, digit)
        try:
            rows = M.two_stage(model, False, tokenizer, questions, 6, True, 4, batch_size=2)
            for ex, row in zip(questions, rows):
                cot = tokenizer(row["cot"], add_special_tokens=False)["input_ids"]
                with torch.no_grad(), model.disable_adapter():
                    for code in ex.metadata["codes"].values():
                        r = M.reward_row(tokenizer, dc.replace(ex, answer=code), cot, 6, True)
                        logp = torch.log_softmax(model(input_ids=torch.tensor([r.ids])).logits[0].float(), -1)
                        direct = sum(float(logp[len(r.ids) - r.n_answer - 1 + k, t])
                                     for k, t in enumerate(r.ids[-r.n_answer:]))
                        assert row["candidate_logprobs"][code] == pytest.approx(direct, abs=1e-3), code
        finally:
            hook.remove()
        for ex, row in zip(questions, rows):
            want = next(c for c in ex.metadata["codes"].values() if set(c) == {digit})
            assert row["answer_choice"] == want and row["answer_choice_correct"] is (want == ex.answer)
            assert row["answer_logprob_gold"] == row["candidate_logprobs"][ex.answer]
            n_gold = len(tokenizer(" " + ex.answer, add_special_tokens=False)["input_ids"])
            assert row["answer_logprob"] == pytest.approx(row["answer_logprob_gold"] / n_gold, abs=1e-5)
    # Tasks without candidate codes: no choice is scored, singling out is carrying.
    (plain,) = M.two_stage(model, False, tokenizer, arithmetic(1), 5, True, 4, batch_size=2)
    assert "answer_choice_correct" not in plain and plain["cot_singles_out"] == plain["cot_contains_answer"]


def test_candidate_shares_over_sampled_and_evaluated_cots(tokenizer):
    ex = locker()
    texts = [" red 3252, blue 9692, green 2617", " green 2617 is the code", " blue 9692 and red 3252", " The code is 2"]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    cots = torch.tensor([row + [tokenizer.eos_token_id] * (width - len(row)) for row in ids])  # eos: skipped on decode
    shares = M.cot_candidate_shares(tokenizer, [ex], cots, 4)
    assert shares == {"cot_contains_answer": 0.5, "cot_singles_out": 0.25, "cot_multiple_candidates": 0.5}
    rows = [{**M.cot_candidates(t, M.answer_candidates(ex)), "answer_choice_correct": c}
            for t, c in zip(texts, (True, True, False, False))]
    assert M.candidate_summary(rows) == {"cot_singles_out": 0.25, "cot_multiple_candidates": 0.5,
                                         "accuracy_candidate_choice": 0.5}


def test_rl_step_logs_the_share_of_cots_that_copy_several_codes(actor):
    monitors = run_step(actor, small_config(), [locker()])
    for key in ("cot_contains_answer", "cot_singles_out", "cot_multiple_candidates"):
        assert monitors[key] in {k / 4 for k in range(5)}, key  # a share of the step's group of 4 CoTs
