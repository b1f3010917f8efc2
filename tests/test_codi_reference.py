"""CODI against its reference code, GitHub zhenyi4/codi at commit 4fd88d4b76f7f7a4d912c07cfd4796ee9e0a0339 (the
official implementation): the distillation loss, the distilled positions and the GSM8k-Aug preprocessing (rows, length
filter, token sequences), transcribed below with their file and line numbers, give what ours gives on the same
inputs; the teacher's target pass runs in training mode, as there."""
import re

import pytest
import torch
from torch import nn

from conftest import LORA
from cotlab.schema import Example
from cotlab.data.sources import gsm8k_aug_row, normalize_number
from cotlab.methods import codi as C
from cotlab.prompts import question_block


# ---------------------------------------------------------------- the reference, transcribed

def reference_distill_loss(outputs_hidden_states, ref_hidden_states, model_answer_position, ref_answer_position,
                           distill_loss_type, distill_loss_div_std):
    """zhenyi4/codi src/model.py: the loss function L213-216 ("l2" is MSE), the per-layer loop L356-368. The
    positions are the ones after the reference's -1 shift (L327-328), i.e. those that predict the first answer token."""
    distill_loss_fct = nn.SmoothL1Loss() if distill_loss_type == "smooth_l1" else nn.MSELoss()
    distill_loss = 0
    for out, ref_out in zip(outputs_hidden_states, ref_hidden_states):
        ref_selected = ref_out.gather(
            1, ref_answer_position.unsqueeze(-1).unsqueeze(-1).expand(-1, -1, ref_out.size(-1)))
        out_selected = out.gather(1, model_answer_position.unsqueeze(-1).unsqueeze(-1).expand(-1, -1, out.size(-1)))
        distill_loss_tmp = distill_loss_fct(out_selected, ref_selected.detach())
        if distill_loss_div_std:
            if distill_loss_type == "l2":  # L363-364: the l2 term is divided by the std a second time
                distill_loss_tmp /= ref_selected.std()
            distill_loss_tmp /= ref_selected.std()
        distill_loss += distill_loss_tmp
    distill_loss /= len(outputs_hidden_states)
    return distill_loss


def reference_icot(example, tokenizer, max_token_num, include_last_cot=False):
    """zhenyi4/codi train.py L235 and L263-287, the "icot" (GSM8k-Aug) branch of SupervisedDataset, unmodified (the
    cot_list of L269 and L274-276 is built and never read). Returns (question, cot, answer), or None where the row is
    skipped."""
    question = f"{example['question']}"  # L235
    # avoid OOM: remove very long data
    token_num = len(tokenizer.encode(example["question"] + example["cot"] + example["answer"]))  # L265
    if token_num > max_token_num:  # L266-267
        return None
    cot = f"{example['cot']}".split(" ")  # L270
    if not include_last_cot:  # L271-272
        cot = cot[:-1]
    answer = example["answer"].split(" ")[-1]  # L277
    if not answer[0].isdigit():  # L279-281: negative answers are skipped
        return None
    answer = f"The answer is: {answer}"  # L283-284
    answer = answer.replace("####", "")
    return question, " ".join(cot), answer  # L285-287


def reference_preprocess(question, cot, answer, tokenizer, bot_id, eot_id):
    """zhenyi4/codi train.py `preprocess` L175-202 for one row, with remove_eos True (both GSM8k-Aug scripts,
    scripts/train_llama1b_gsm8k-aug.sh L40, train_gpt2_gsm8k-aug.sh L40): (encoder ids, teacher ids, decoder ids)."""
    def tokenize(text):  # _tokenize_fn L64-77: one text, so no padding
        return tokenizer(text, max_length=256, truncation=True)["input_ids"]

    sources_id, cot_id, answers_id = tokenize(question), tokenize(cot), tokenize(answer)  # L175-177
    answers_id = answers_id + [tokenizer.eos_token_id]  # L183
    # L185-187 test the batch's first CoT for BOS and strip one token from every CoT and answer; a tokenizer adds BOS
    # to every text or to none, so testing each row is the same
    if cot_id[:1] == [tokenizer.bos_token_id]:
        cot_id, answers_id = cot_id[1:], answers_id[1:]
    ref_input_ids = sources_id + cot_id + answers_id  # L189
    sources_id = sources_id + [bot_id]  # L197
    answers_id = [eot_id] + answers_id  # L199-200
    return sources_id, ref_input_ids, answers_id


def reference_answer_positions(ref_input_ids, answers_id, tokenizer, model_name):
    """The distilled positions: train.py L157-162 (get_answer_token_position: the token after the first match of
    "The answer is:"), L204-210 (its ids, BOS removed), src/model.py L306-308 (one more for llama/qwen, whose " "
    before a number is a token of its own) and L327-328 (one less: the position that predicts that token).
    Returns (model_answer_position, ref_answer_position)."""
    def get_answer_token_position(tokens, answer_prompts):  # L157-162
        match_indices = (tokens.unfold(0, len(answer_prompts[0]), 1) == answer_prompts[0]).all(dim=1).nonzero(
            as_tuple=True)[0].item()
        return match_indices + len(answer_prompts[0])

    answer_prompts = [torch.tensor(tokenizer.encode("The answer is:")),
                      torch.tensor(tokenizer.encode("The next step result is:"))]  # L204
    if answer_prompts[0][0] == tokenizer.bos_token_id:  # L205-207
        answer_prompts[0] = answer_prompts[0][1:]
        answer_prompts[1] = answer_prompts[1][1:]
    ref_answer_position = torch.tensor([get_answer_token_position(x, answer_prompts) for x in ref_input_ids])
    model_answer_position = torch.tensor([get_answer_token_position(x, answer_prompts) for x in answers_id])
    if "llama" in model_name.lower() or "qwen" in model_name.lower():  # model.py L306-308
        model_answer_position = model_answer_position + 1
        ref_answer_position = ref_answer_position + 1
    return model_answer_position - 1, ref_answer_position - 1  # L327-328


# ---------------------------------------------------------------- distillation loss

@pytest.mark.parametrize("ours, theirs", [("smooth_l1", "smooth_l1"), ("mse", "l2")])
@pytest.mark.parametrize("div_std", [True, False])
def test_distill_loss_matches_the_reference(ours, theirs, div_std):
    torch.manual_seed(0)
    layers, batch, seq, width = 4, 3, 7, 16
    student = [torch.randn(batch, seq, width) for _ in range(layers)]
    # A scale far from 1, so dividing by the std once or twice gives clearly different values.
    teacher = [3.0 * torch.randn(batch, seq + 2, width) for _ in range(layers)]
    s_pos, t_pos = torch.tensor([1, 4, 6]), torch.tensor([2, 0, 8])
    expected = reference_distill_loss(student, teacher, s_pos, t_pos, theirs, div_std)
    got = C.distill_loss(student, teacher, s_pos, t_pos, ours, div_std)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


def test_mse_is_divided_by_the_variance():
    t = [5.0 * torch.randn(2, 3, 8)]
    s = [torch.randn(2, 3, 8)]
    pos = torch.tensor([0, 2])
    plain = C.distill_loss(s, t, pos, pos, "mse", False)
    std = t[0][torch.arange(2), pos].std()
    assert float(C.distill_loss(s, t, pos, pos, "mse", True)) == pytest.approx(float(plain / std ** 2), rel=1e-5)
    with pytest.raises(ValueError, match="l2"):
        C.distill_loss(s, t, pos, pos, "l2", True)  # the reference's name for it is not ours


# ---------------------------------------------------------------- the teacher's target pass

def test_target_pass_runs_in_train_mode_as_the_reference(tiny_base):
    """The reference's no-grad target pass (src/model.py L296-297) runs under the Trainer's model.train(): LoRA
    dropout (0.1, train.py L135) is active in it. Ours does the same, and counts functional attention dropout too."""
    from cotlab.models import load_for_training

    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", {**LORA, "dropout": 0.1}, None)
    ids = C.add_codi_tokens(model, tokenizer)
    codi = C.CODI(model, C.CODIConfig(num_latent=1)).train()
    modes = []
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    hook = dropouts[0].register_forward_pre_hook(lambda m, a: modes.append(m.training))
    batch = C.collate([C.encode(tokenizer, ex) for ex in examples(2)], ids["pad"], ids["bot"], ids["eot"])
    try:
        codi.losses(batch)
    finally:
        hook.remove()
    assert modes and all(modes)  # every call, the two teacher passes included, saw dropout on

    plain, _, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    codi = C.CODI(plain, C.CODIConfig()).train()
    assert not codi._dropout_active()
    plain.config.attention_dropout = 0.1
    assert codi._dropout_active() and not codi.eval()._dropout_active()


# ---------------------------------------------------------------- GSM8k-Aug preprocessing

ROWS = [
    {"question": "Q1?", "cot": "<<600*30/100=180>> <<600*10/100=60>> <<180+60=240>> <<600-240=360>>", "answer": "360"},
    {"question": "Q2?", "cot": "<<2*3=6>>", "answer": "6"},  # one step: the reference's CoT is left empty
    {"question": "Q3?", "cot": "<<4-9=-5>> <<-5*2=-10>>", "answer": "-10"},  # negative: skipped in training
    {"question": "Q4?", "cot": "<<1000+80=1080>> <<1080*1=1080>>", "answer": "1,080"},
    # over the reference's max_token_num 200 (the Llama script) with any of the tokenizers here
    {"question": "Tom " * 210 + "has how many?", "cot": "<<2+2=4>> <<4*3=12>>", "answer": "12"},
    {"question": " Tom has  3 bags of 4 apples. ", "cot": "<<3*4=12>> <<12+1=13>>", "answer": "13"},  # spaces as given
]
# The reference's form (the CODI preset's task_specs.gsm8k_aug) and cotlab's earlier one (params.yaml's), by name.
REFERENCE_FORM = {"annotations": "keep", "max_token_num": 200, "question_format": "raw"}
EARLIER_FORM = {"annotations": "strip", "max_token_num": None, "question_format": "labelled"}


def brackets_off(cot: str) -> str:
    return " ".join(re.findall(r"<<([^>]*)>>", cot))  # the earlier form keeps the calculator steps without << >>


def word_tokenizer(bos: bool = False):
    """A GPT-2-like tokenizer built here (no download): GPT-2's byte-level pre-tokenizer, one token per piece, so
    " 360" after "The answer is:" is one token, as in GPT-2; with `bos`, a BOS before every text, as Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = [t for r in ROWS for t in (r["question"], f"Question: {r['question'].strip()}\n", r["cot"] + "\n",
                                      brackets_off(r["cot"]) + "\n", r["question"] + r["cot"] + r["answer"],
                                      f"The answer is: {normalize_number(r['answer'])}")]
    pieces = sorted({piece for t in texts for piece, _ in pre.pre_tokenize_str(t)})
    tok = Tokenizer(models.WordLevel(vocab={p: i for i, p in enumerate(["<s>", "</s>", "<unk>", *pieces])},
                                     unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre, decoders.ByteLevel()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


TOKENIZERS = {"smollm2": None, "gpt2-like": False, "gpt2-like+bos": True}  # the tiny model's, then word_tokenizer's


def pick(which, tokenizer):
    return tokenizer if TOKENIZERS[which] is None else word_tokenizer(bos=TOKENIZERS[which])


def ours(rows, tokenizer, include_last_cot=False, **form):
    """Our training rows: gsm8k_aug_row, then the length filter CODI's training applies (codi.train)."""
    built = [gsm8k_aug_row(row, f"gsm8k_aug-train-{i}", include_last_cot=include_last_cot, **form)
             for i, row in enumerate(rows)]
    return [ex for ex in built if ex is not None and C.within_max_token_num(tokenizer, ex)]


@pytest.mark.parametrize("include_last_cot", [False, True])
def test_gsm8k_aug_training_rows_match_the_reference(tokenizer, include_last_cot):
    """In the reference's form (the CODI preset): the same rows survive the length filter and the negative-answer
    skip, each with the raw question, the CoT with its << >> and the answer the reference writes. The limit is the
    Llama script's 200, then one row's own count (kept: the reference drops only counts above it) and one less."""
    counts = [len(tokenizer.encode(r["question"] + r["cot"] + r["answer"])) for r in ROWS]
    assert max(counts) > 200 > min(counts)  # the filter has something to do
    for limit in (200, counts[0], counts[0] - 1):
        expected = [e for r in ROWS if (e := reference_icot(r, tokenizer, limit, include_last_cot)) is not None]
        got = ours(ROWS, tokenizer, include_last_cot, **{**REFERENCE_FORM, "max_token_num": limit})
        assert len(expected) < len(ROWS) - 1  # the negative row, and the long one at least
        assert [(ex.question, ex.reasoning, C.answer_text(ex)) for ex in got] == expected
        assert [ex.answer for ex in got] == [normalize_number(a.removeprefix("The answer is: ")) for *_, a in expected]
    assert ours(ROWS[1:2], tokenizer, **REFERENCE_FORM)[0].reasoning == ""  # one step: the CoT left empty


@pytest.mark.parametrize("which", list(TOKENIZERS))
def test_gsm8k_aug_sequences_match_the_reference_preprocess(tokenizer, which):
    """The reference's form, tokenised by codi.encode: the student's question + <bot>, the teacher's sequence and the
    student's <eot> + answer are the reference's ids (train.py preprocess), for tokenizers with and without BOS."""
    tok = pick(which, tokenizer)
    bot_id, eot_id = len(tok), len(tok) + 1  # bare ids after the vocabulary, as the reference's (model.py L173-175)
    rows = ours(ROWS, tok, **REFERENCE_FORM)
    expected = [reference_preprocess(*e, tok, bot_id, eot_id) for r in ROWS
                if (e := reference_icot(r, tok, REFERENCE_FORM["max_token_num"])) is not None]
    assert len(rows) == len(expected) >= 3
    for ex, (sources_id, ref_input_ids, answers_id) in zip(rows, expected):
        encoded = C.encode(tok, ex)
        assert encoded.question + [bot_id] == sources_id
        assert encoded.teacher == ref_input_ids
        assert [eot_id] + encoded.answer == answers_id


def test_gsm8k_aug_earlier_form_is_an_option(tokenizer):
    """params.yaml's form: the steps without << >>, no length filter, the question stripped and labelled
    ("Question: ...\n", a newline after the CoT too): what cotlab fed before, and still feeds every other task."""
    rows = ours(ROWS, tokenizer, **EARLIER_FORM)
    assert [ex.question for ex in rows] == [r["question"].strip() for r in ROWS if not r["answer"].startswith("-")]
    assert rows[0].reasoning == brackets_off(" ".join(ROWS[0]["cot"].split(" ")[:-1]))
    assert all("max_token_num" not in ex.metadata for ex in rows)
    encoded = C.encode(tokenizer, rows[0])
    assert encoded.question == tokenizer(question_block(rows[0]) + "\n")["input_ids"]
    assert encoded.cot == tokenizer(rows[0].reasoning + "\n", add_special_tokens=False)["input_ids"]
    assert gsm8k_aug_row(ROWS[0], "gsm8k_aug-train-0") == gsm8k_aug_row(ROWS[0], "gsm8k_aug-train-0", **EARLIER_FORM)


@pytest.mark.parametrize("which, model_name", [("smollm2", "meta-llama/Llama-3.2-1B-Instruct"),
                                               ("gpt2-like", "gpt2"), ("gpt2-like+bos", "gpt2")])
def test_distill_positions_match_the_reference(tokenizer, which, model_name):
    """The positions whose hidden states are distilled, found by the reference's rule on the reference's own ids
    (model name and all: SmolLM2's tokenizer, like Llama 3's, writes the " " before a number as a token of its own,
    GPT-2's joins it to the number) are the ones our collate gives the loss: in a right-padded batch of rows of
    different lengths, both forms, an empty CoT among them."""
    tok = pick(which, tokenizer)
    bot_id, eot_id = len(tok), len(tok) + 1
    rows = [*ours(ROWS, tok, **REFERENCE_FORM), *ours(ROWS, tok, **EARLIER_FORM)]
    encoded = [C.encode(tok, ex) for ex in rows]
    assert len({len(e.teacher) for e in encoded}) > 2 and any(not e.cot for e in encoded)
    batch = C.collate(encoded, tok.eos_token_id, bot_id, eot_id)
    assert batch["teacher_mask"].min() == 0  # padded (the answers too where they differ in length)
    unpadded = reference_answer_positions([torch.tensor(e.teacher) for e in encoded],
                                          [torch.tensor([eot_id] + e.answer) for e in encoded], tok, model_name)
    padded = reference_answer_positions(list(batch["teacher_ids"]), list(batch["answer_ids"]), tok, model_name)
    assert torch.equal(unpadded[0], padded[0]) and torch.equal(unpadded[1], padded[1])
    assert torch.equal(batch["student_position"], unpadded[0])
    assert torch.equal(batch["teacher_position"], unpadded[1])


def test_gsm8k_aug_test_rows_stay_whole():
    """The reference evaluates on GSM8k's test split with no such filter (test.py L125-126)."""
    ex = gsm8k_aug_row(ROWS[2], "gsm8k_aug-test-2")
    assert (ex.answer, ex.reasoning) == ("-10", "4-9=-5 -5*2=-10")
    assert gsm8k_aug_row(ROWS[0], "gsm8k_aug-test-0").reasoning.endswith("600-240=360")
    kept = gsm8k_aug_row(ROWS[4], "gsm8k_aug-test-4", **REFERENCE_FORM)
    assert kept.reasoning == ROWS[4]["cot"] and "max_token_num" not in kept.metadata  # the long one too
    assert gsm8k_aug_row(ROWS[2], "x", train=True) is None  # an explicit choice wins over the id


def examples(n):
    return [Example(id=f"m{i}", question=f"Tom has {3 + i} apples and buys {10 * (i + 1)} more. How many now?",
                    answer=str(13 + 11 * i), answer_type="number",
                    reasoning=f"{3 + i} + {10 * (i + 1)} = {13 + 11 * i}")
            for i in range(n)]


def test_an_empty_cot_trains_with_the_teacher_reading_question_then_answer(tiny_base):
    """A one-step GSM8k-Aug problem, its step dropped, keeps training in the reference (train.py L286: the CoT is
    ""): its teacher sequence is question + answer, and train() keeps the row."""
    from cotlab.models import load_for_training

    model, tokenizer, _ = load_for_training(tiny_base, "cpu", "none", LORA, None)
    ids = C.add_codi_tokens(model, tokenizer)
    empty = Example(id="e", question="Tom has 2 bags of 3 apples. How many?", answer="6", answer_type="number",
                    reasoning="")
    encoded = C.encode(tokenizer, empty)
    assert encoded.cot == [] and encoded.teacher == encoded.question + encoded.answer
    codi = C.CODI(model, C.CODIConfig(num_latent=1))
    metrics, _ = C.train(codi, tokenizer, [empty, *examples(1)], C.CODIConfig(epochs=1, batch_size=2), ids, seed=0)
    assert metrics["n_examples"] == 2
