"""CODI's mechanics on a tiny random Llama: the latent loop reuses the KV cache, the distillation position is the
one before the first answer-value token for two tokenizers, gradients reach LoRA and the projection but not the
teacher's targets, and padding changes nothing."""
import pytest
import torch

from conftest import LORA
from cotlab.schema import Example
from cotlab.methods import codi as C


@pytest.fixture
def model_and_tokenizer(tiny_base):
    from cotlab.models import load_for_training

    torch.manual_seed(0)
    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    ids = C.add_codi_tokens(model, tokenizer)
    with torch.no_grad():  # a non-zero adapter: LoRA B starts at zero, which would hide gradient paths
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model, tokenizer, ids


def math_examples(n=3):
    return [Example(id=f"m{i}", question=f"Tom has {3 + i} apples and{' quickly' * i} buys {10 * (i + 1)} more. How many now?",
                    answer=str(3 + i + 10 * (i + 1)), answer_type="number",
                    reasoning=f"{3 + i} + {10 * (i + 1)} = {3 + i + 10 * (i + 1)}" + " apples." * i)
            for i in range(n)]


def char_tokenizer():
    """A second, different tokenizer: one token per character (built with `tokenizers`, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(set("".join(chr(c) for c in range(32, 127))))
    vocab = {ch: i for i, ch in enumerate(["<s>", "</s>", *alphabet])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<s>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("which", ["smollm2", "characters"])
def test_distill_position_is_before_the_first_answer_token(tokenizer, which):
    tok = tokenizer if which == "smollm2" else char_tokenizer()
    ex = math_examples(2)[1]  # answer "24"
    encoded = C.encode(tok, ex)
    value_token = tok.decode([encoded.answer[encoded.value_index]]).strip()
    assert value_token and "24".startswith(value_token)  # the first token carrying the value
    before = tok.decode(encoded.answer[: encoded.value_index])
    assert before.rstrip() == "The answer is:"  # everything before it is the prefix (and maybe its space)
    teacher = encoded.teacher
    assert teacher[encoded.teacher_distill_position + 1] == encoded.answer[encoded.value_index]
    answer_call = [None] + encoded.answer  # <eot> first
    assert answer_call[encoded.student_distill_position + 1] == encoded.answer[encoded.value_index]


def test_the_latent_loop_reuses_the_kv_cache(model_and_tokenizer):
    model, tokenizer, ids = model_and_tokenizer
    codi = C.CODI(model, C.CODIConfig(num_latent=4))
    batch = C.collate([C.encode(tokenizer, ex) for ex in math_examples()], ids["pad"], ids["bot"], ids["eot"])
    calls = []
    hook = model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(
            (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]).shape[1]),
        with_kwargs=True)
    try:
        with torch.no_grad():
            past, mask, position, _ = codi.think(batch["question_ids"], batch["question_mask"], 4)
            codi.answer_pass(past, mask, position, batch["answer_ids"], batch["answer_mask"])
    finally:
        hook.remove()
    # One call over the question prefix, then K = 4 single-position calls and one answer call: K + 1 after it.
    assert calls[0] == batch["question_ids"].shape[1]
    assert calls[1:] == [1, 1, 1, 1, batch["answer_ids"].shape[1]]
    assert past.get_seq_length() == batch["question_ids"].shape[1] + 4 + batch["answer_ids"].shape[1]


def test_gradients_reach_lora_and_the_projection_not_the_targets(model_and_tokenizer):
    model, tokenizer, ids = model_and_tokenizer
    codi = C.CODI(model, C.CODIConfig(num_latent=2))
    batch = C.collate([C.encode(tokenizer, ex) for ex in math_examples()], ids["pad"], ids["bot"], ids["eot"])
    parts = codi.losses(batch)
    assert all(torch.isfinite(v) for v in parts.values()) and parts["distill"] > 0
    parts["loss"].backward()
    lora = {n: p for n, p in codi.named_parameters() if "lora_" in n}
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in lora.items() if "lora_A" in n)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in codi.prj.parameters())
    # The distillation term alone moves the student, never the teacher's states.
    student = torch.randn(2, 8, requires_grad=True)
    teacher = torch.randn(2, 8, requires_grad=True)
    loss = C.distill_loss([student[None]], [teacher[None]], torch.tensor([0]), torch.tensor([0]), "smooth_l1", True)
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_padding_changes_nothing(model_and_tokenizer):
    """Each example alone vs in a padded batch: the same teacher CE (token-weighted), the same answers. In float32:
    bf16 logits often tie exactly, and which tied token argmax picks depends on the kernel, which padding changes."""
    model, tokenizer, ids = model_and_tokenizer
    model.float().eval()
    codi = C.CODI(model, C.CODIConfig(num_latent=3))
    encoded = [C.encode(tokenizer, ex) for ex in math_examples()]
    assert len({len(e.teacher) for e in encoded}) > 1 and len({len(e.question) for e in encoded}) > 1
    batch = C.collate(encoded, ids["pad"], ids["bot"], ids["eot"])
    with torch.no_grad():
        batched = model(input_ids=batch["teacher_ids"], attention_mask=batch["teacher_mask"],
                        labels=batch["teacher_labels"]).loss
        total, tokens = 0.0, 0
        for e in encoded:
            one = C.collate([e], ids["pad"], ids["bot"], ids["eot"])
            n = int((one["teacher_labels"][:, 1:] != -100).sum())
            total += float(model(input_ids=one["teacher_ids"], labels=one["teacher_labels"]).loss) * n
            tokens += n
        assert float(batched) == pytest.approx(total / tokens, rel=1e-4)
        together = codi.generate(batch["question_ids"], batch["question_mask"], ids["eot"], 6)
        alone = [codi.generate(*[C.collate([e], ids["pad"], ids["bot"], ids["eot"])[k]
                                 for k in ("question_ids", "question_mask")], ids["eot"], 6)[0] for e in encoded]
    assert together == alone


def test_training_changes_lora_and_projection(model_and_tokenizer):
    import math

    model, tokenizer, ids = model_and_tokenizer
    codi = C.CODI(model, C.CODIConfig(num_latent=2))
    before = {n: p.detach().clone() for n, p in codi.named_parameters() if p.requires_grad}
    rows = model.get_base_model().get_input_embeddings().weight  # tied: the output rows too
    added = rows[[ids["bot"], ids["eot"]]].detach().clone()
    # <bot>/<eot> start as resize_token_embeddings' mean-initialised rows: equal to within its 1e-5-scaled noise
    assert 0 < float((added[0] - added[1]).abs().max()) < 1e-4
    metrics, curve = C.train(codi, tokenizer, math_examples(4), C.CODIConfig(
        num_latent=2, epochs=1, batch_size=2, lr=1e-3, warmup_ratio=0.0), ids, seed=0)
    assert metrics["train_steps"] == 2 and math.isfinite(metrics["train_loss"])
    assert all(set(C.LOGGED) <= set(row) for row in curve)
    after = dict(codi.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before if "lora_A" in n or n.startswith("prj"))
    # and training leaves them as they are: the rows every test here uses are the rows a trained model has
    assert torch.equal(rows[[ids["bot"], ids["eot"]]], added)


def test_save_load_reproduces_the_predictions(model_and_tokenizer, tiny_base, tmp_path):
    """The checkpoint carries the adapter, the projection and the added rows: loaded, CODI predicts exactly what the
    trained model predicts once its LoRA is merged the same way. Loading merges LoRA into the bf16 base weights
    (cotlab.models.load_checkpoint), which rounds: against the unmerged model the thoughts agree to that rounding, not
    bit for bit, and so greedy tokens need not (bf16 logits often tie, and a tie's argmax depends on the kernel).
    <bot>/<eot> keep the rows training leaves them (add_codi_tokens' mean-initialised rows, frozen: see
    test_training_changes_lora_and_projection), nearly equal to each other; a load that did not restore them would
    draw fresh random rows, which the exact row check and the thoughts (the first is read at <bot>) both catch."""
    model, tokenizer, ids = model_and_tokenizer
    codi = C.CODI(model, C.CODIConfig(num_latent=3))
    with torch.no_grad():
        for p in codi.prj.parameters():
            p.add_(0.1 * torch.randn_like(p))
    codi.eval()
    n_base = len(tokenizer) - 2 - (tokenizer.pad_token == C.PAD)
    added = model.get_base_model().get_input_embeddings().weight[n_base:].detach().clone()
    examples = math_examples()
    batch = C.question_batch(tokenizer, examples, ids)
    trained_thoughts, loaded_thoughts = [], []
    with torch.no_grad():
        codi.think(batch["question_ids"], batch["question_mask"], 3, record=trained_thoughts)
    C.save(codi, tokenizer, tmp_path / "codi", tiny_base, {"test": True}, n_base)
    loaded, tokenizer2, manifest = C.load(tmp_path / "codi", "cpu")
    assert manifest["token_ids"] == ids and manifest["codi"]["num_latent"] == 3
    assert tokenizer2.convert_tokens_to_ids([C.BOT, C.EOT]) == [ids["bot"], ids["eot"]]
    reloaded_rows = loaded.lm.get_input_embeddings().weight[n_base:]
    assert torch.equal(reloaded_rows, added.to(reloaded_rows.dtype))
    with torch.no_grad():
        loaded.think(batch["question_ids"], batch["question_mask"], 3, record=loaded_thoughts)
    for trained, reloaded in zip(trained_thoughts, loaded_thoughts, strict=True):
        torch.testing.assert_close(reloaded.float(), trained.float(), rtol=0.05, atol=0.05)

    codi.lm = codi.lm.merge_and_unload()
    merged = codi.generate(batch["question_ids"], batch["question_mask"], ids["eot"], 8)
    assert loaded.generate(batch["question_ids"], batch["question_mask"], ids["eot"], 8) == merged
    # The evaluation path (batches of 2, decoding) answers what the in-memory model answers on the same batches.
    expected = []
    for start in range(0, len(examples), 2):
        pair = C.question_batch(tokenizer, examples[start:start + 2], ids)
        expected += [tokenizer.decode(tokens, skip_special_tokens=True)
                     for tokens in codi.generate(pair["question_ids"], pair["question_mask"], ids["eot"], 8)]
    assert all(expected)  # ordinary tokens, not only <bot>/<eot> (which decoding drops)
    evaluated = C.predict(loaded, tokenizer2, examples, manifest["token_ids"], 8, batch_size=2)
    assert [g.text for g in evaluated] == expected


def test_probe_reads_each_thought_through_the_lm_head(model_and_tokenizer):
    model, tokenizer, ids = model_and_tokenizer
    codi = C.CODI(model, C.CODIConfig(num_latent=3, inf_latent_iterations=4)).eval()
    ex = math_examples(1)[0]
    thoughts = C.probe(codi, tokenizer, ex, ids, top_k=5)
    assert [t["thought"] for t in thoughts] == [1, 2, 3, 4]
    assert all(len(t["tokens"]) == 5 and t["probs"] == sorted(t["probs"], reverse=True) for t in thoughts)
    # Thought 1 is projected from the state at <bot>: the LM's own next-token distribution after the question.
    question = torch.tensor([C.encode_question(tokenizer, ex) + [ids["bot"]]])
    with torch.no_grad():
        logits = model(input_ids=question).logits[0, -1]
    assert thoughts[0]["tokens"][0] == tokenizer.decode([int(logits.argmax())])
    assert thoughts[0]["probs"][0] == pytest.approx(float(torch.softmax(logits, -1).max()), abs=1e-4)


def test_targets_come_from_a_separate_pass_only_when_dropout_is_active(tiny_base):
    """Without dropout the CE pass's states, detached, are the targets (one teacher pass saved); with LoRA dropout
    in training a separate no-grad pass gives them, as in the reference (its own dropout masks, not noise-free)."""
    from cotlab.models import load_for_training

    for dropout, expected in ((0.0, False), (0.1, True)):
        model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", {**LORA, "dropout": dropout}, None)
        ids = C.add_codi_tokens(model, tokenizer)
        codi = C.CODI(model, C.CODIConfig(num_latent=2)).train()
        assert codi._dropout_active() is expected
        calls = []
        hook = model.get_base_model().register_forward_pre_hook(lambda *a: calls.append(1))
        batch = C.collate([C.encode(tokenizer, ex) for ex in math_examples(2)], ids["pad"], ids["bot"], ids["eot"])
        try:
            codi.losses(batch)["loss"].backward()
        finally:
            hook.remove()
        assert len(calls) == (1 if expected else 0) + 1 + (1 + 2) + 1  # [clean pass] + CE pass + think + answer
        assert not codi.eval()._dropout_active()
