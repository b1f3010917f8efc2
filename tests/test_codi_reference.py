"""CODI against its reference code, GitHub zhenyi4/codi at commit 4fd88d4 (the official implementation): the
distillation loss and the GSM8k-Aug preprocessing, transcribed below with their file and line numbers, give what ours
gives on the same inputs; the teacher's target pass runs in training mode, as there."""
import re

import pytest
import torch
from torch import nn

from conftest import LORA
from cotlab.schema import Example
from cotlab.data.sources import gsm8k_aug_row, normalize_number
from cotlab.methods import codi as C


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


def reference_icot(example, include_last_cot=False):
    """zhenyi4/codi train.py L263-287, the "icot" (GSM8k-Aug) branch of SupervisedDataset, without its tokenizer-
    dependent max_token_num filter (L264-267). Returns (cot, answer text), or None where the row is skipped."""
    cot = f"{example['cot']}".split(" ")  # L270
    if not include_last_cot:  # L271-272
        cot = cot[:-1]
    answer = example["answer"].split(" ")[-1]  # L277
    if not answer[0].isdigit():  # L279-281: negative answers are skipped
        return None
    answer = f"The answer is: {answer}"  # L283-284
    answer = answer.replace("####", "")
    return " ".join(cot), answer  # L286-287


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
]


def brackets_off(cot: str) -> str:
    return " ".join(re.findall(r"<<([^>]*)>>", cot))  # ours keeps the calculator steps without << >>


@pytest.mark.parametrize("include_last_cot", [False, True])
def test_gsm8k_aug_training_rows_match_the_reference(include_last_cot):
    for i, row in enumerate(ROWS):
        expected = reference_icot(row, include_last_cot)
        ex = gsm8k_aug_row(row, f"gsm8k_aug-train-{i}", include_last_cot=include_last_cot)
        if expected is None:
            assert ex is None
            continue
        cot, answer = expected
        assert ex.reasoning == brackets_off(cot)
        assert ex.answer == normalize_number(answer.removeprefix("The answer is: "))
        assert ex.metadata["solution"] == row["cot"]  # the full CoT stays at hand
    assert gsm8k_aug_row(ROWS[1], "gsm8k_aug-train-1").reasoning == ""


def test_gsm8k_aug_test_rows_stay_whole():
    """The reference evaluates on GSM8k's test split with no such filter (test.py L125-126)."""
    ex = gsm8k_aug_row(ROWS[2], "gsm8k_aug-test-2")
    assert (ex.answer, ex.reasoning) == ("-10", "4-9=-5 -5*2=-10")
    assert gsm8k_aug_row(ROWS[0], "gsm8k_aug-test-0").reasoning.endswith("600-240=360")
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
