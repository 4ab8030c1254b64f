"""Chat templates and loss masks, token by token, on three templates (the embedded model's own ChatML,
the bundled alpaca and llama-3), plus the choice of template, end-of-turn and pad tokens."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from data_files import LLAMA3_SPECIALS, config_for, sharegpt, tokenizer_copy, write_jsonl
from slothctl.data import prepare
from slothctl.data.chat_template import content_use
from slothctl.data.encode import IGNORE, Segmenter, TemplateFailure
from slothctl.data.templates import NEW_PAD_TOKEN, choose_chat_template, choose_pad_token
from slothctl.data.tokenizer import load_text_tokenizer
from slothctl.errors import DataError

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
TWO_TURNS = sharegpt(("human", "Hello"), ("gpt", "Hi there!"), ("human", "Again"), ("gpt", "Bye!"))


@pytest.fixture(scope="module")
def smol(embedded_model):
    return load_text_tokenizer(str(embedded_model))


@pytest.fixture(scope="module")
def llama3_folder(tmp_path_factory, embedded_model) -> Path:
    """A base-model tokenizer with Llama-3's special tokens, no chat template and eos <|end_of_text|>."""
    return tokenizer_copy(embedded_model, tmp_path_factory.mktemp("llama3"),
                          add_special=LLAMA3_SPECIALS + ["<|end_of_text|>"], template=None,
                          config={"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
                                  "pad_token": None, "unk_token": None})


def trained_runs(tok, example) -> list[str]:
    """The trained stretches of an example, each decoded on its own."""
    runs, run = [], []
    for token, label in zip(example.input_ids + [None], example.labels + [IGNORE]):
        if label != IGNORE:
            run.append(token)
        elif run:
            runs.append(tok.decode(run))
            run = []
    return runs


def assert_masks(tok, example, pieces: list[tuple[str, bool]]) -> None:
    """The example is the whole text written out by hand, tokenized in one piece (as
    apply_chat_template does), and its trained tokens are exactly the trained pieces."""
    assert example.input_ids == tok.backend.encode("".join(t for t, _ in pieces), add_special_tokens=False).ids
    assert trained_runs(tok, example) == [text for text, trained in pieces if trained]


def only_example(tmp_path: Path, model, rows: list, **data):
    cfg = config_for(write_jsonl(tmp_path / "d.jsonl", rows), model, **data)
    tok = load_text_tokenizer(str(model))
    prepared = prepare(cfg, tok)
    return prepared, prepared.train[0], tok


def test_chatml_own_template_masks_every_assistant_turn(tmp_path, embedded_model):
    prepared, example, tok = only_example(tmp_path, embedded_model, [TWO_TURNS])
    assert_masks(tok, example, [
        (SMOL_SYSTEM + "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", False),
        ("Hi there!<|im_end|>", True),
        ("\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n", False),
        ("Bye!<|im_end|>", True),
        ("\n", False)])  # what follows the end of a turn is not the reply's
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE]
    assert tok.decode(trained) == "Hi there!<|im_end|>Bye!<|im_end|>"
    assert trained.count(2) == 2  # each reply's <|im_end|> (eos, id 2) is learnt
    assert prepared.template.name == "tokenizer" and prepared.report["end_of_turn"] == "<|im_end|>"
    assert prepared.report["pad_token"] == "<|endoftext|>"  # distinct from eos


def test_alpaca_template_masks_replies_and_ends_with_eos(tmp_path, embedded_model):
    row = sharegpt(("system", "Answer briefly."), ("human", "Hello"), ("gpt", "Hi there!"), ("human", "Again"),
                   ("gpt", "Bye!"))
    prepared, example, tok = only_example(tmp_path, embedded_model, [row], chat_template="alpaca")
    assert_masks(tok, example, [
        ("Answer briefly.\n\n### Instruction:\nHello\n\n### Response:\n", False),
        ("Hi there!<|im_end|>", True),
        ("\n\n### Instruction:\nAgain\n\n### Response:\n", False),
        ("Bye!<|im_end|>", True),
        ("\n\n", False)])
    assert prepared.template.name == "alpaca" and prepared.template.end_of_turn == "<|im_end|>"


def test_llama3_template_masks_trims_and_uses_eot(tmp_path, llama3_folder):
    row = sharegpt(("human", "  Hello \n"), ("gpt", "Hi there! "), ("human", "Again"), ("gpt", "Bye!"))
    prepared, example, tok = only_example(tmp_path, llama3_folder, [row], chat_template="llama-3")
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert_masks(tok, example, [
        ("<|begin_of_text|>" + header.format("user") + "Hello<|eot_id|>" + header.format("assistant"), False),
        ("Hi there!<|eot_id|>", True),
        (header.format("user") + "Again<|eot_id|>" + header.format("assistant"), False),
        ("Bye!<|eot_id|>", True)])
    assert example.input_ids[-1] == tok.token_to_id("<|eot_id|>")  # ends with the end of turn, no <|end_of_text|>
    assert prepared.report["end_of_turn"] == "<|eot_id|>"
    assert prepared.report["pad_token"] not in (None, "<|eot_id|>", "<|end_of_text|>")


def test_text_rows_and_whole_conversation_training(tmp_path, embedded_model, smol):
    _, example, tok = only_example(tmp_path, embedded_model, [{"text": "Sloths are slow."}])
    assert_masks(tok, example, [("Sloths are slow.<|im_end|>", True)])
    assert IGNORE not in example.labels
    _, example, tok = only_example(tmp_path, embedded_model, [TWO_TURNS], train_on_responses_only=False)
    assert IGNORE not in example.labels and example.input_ids[-2:] == [2, tok.token_to_id("Ċ")]


CONTENTS = ["Hello", "  padded  ", "", "{0} {1} {{x}}", "line\n\nbreaks", "ünïcödé ✓", "<|im_end|> inside",
            "\u27e6 brackets \u27e7", " ", "ends with newline\n"]
INSPECTING = ("{% for m in messages %}{% if 'secret' in m['content'] %}[hidden]{% else %}"
              "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endif %}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TRUTHY = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}{% if m.content %}{{ m.content | trim }}"
          "{% else %}(empty){% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def outcome(cut, messages):
    try:
        return cut(messages)
    except TemplateFailure as exc:  # e.g. the inspecting template hides a reply: both ways must say so
        return str(exc)


@pytest.mark.parametrize("name", ["tokenizer", "chatml", "alpaca", "llama-3", "inspecting", "truthy"])
def test_fast_cuts_equal_exact_cuts(name, smol, llama3_folder):
    """The per-shape plans give exactly the segments that rendering every prefix gives."""
    tok = load_text_tokenizer(str(llama3_folder)) if name == "llama-3" else smol
    source = {"inspecting": INSPECTING, "truthy": TRUTHY}.get(name) or choose_chat_template(
        "auto" if name == "tokenizer" else name, tok.chat_template, tok.eos_token, tok.has_token).source
    end = "<|eot_id|>" if name == "llama-3" else "<|im_end|>"
    rng = random.Random(7)
    segmenter, reference = Segmenter(source, end, tok, True), Segmenter(source, end, tok, True)
    roles = ["user", "assistant"] if name == "alpaca" else ["system", "user", "assistant", "tool"]
    for _ in range(300):
        shape = ["user"] + [rng.choice(roles) for _ in range(rng.randint(0, 4))] + ["assistant"]
        if name == "alpaca" and rng.random() < 0.3:
            shape = ["system"] + shape
        messages = [{"role": r, "content": rng.choice(CONTENTS + ["secret " + rng.choice(CONTENTS)])} for r in shape]
        assert outcome(segmenter.conversation, messages) == outcome(reference.exact, messages), messages
    assert content_use(source) == {"inspecting": "inspected", "truthy": "truthiness"}.get(name, "opaque")


def test_template_choice(embedded_model, llama3_folder, tmp_path, smol):
    def choose(tok, choice="auto"):
        return choose_chat_template(choice, tok.chat_template, tok.eos_token, tok.has_token)

    assert choose(smol).name == "tokenizer"
    llama = load_text_tokenizer(str(llama3_folder))
    assert choose(llama).name == "chatml"  # no template of its own; it has ChatML's tokens too
    only_llama = load_text_tokenizer(str(tokenizer_copy(
        embedded_model, tmp_path / "l", rename={"<|im_start|>": "<x1>", "<|im_end|>": "<x2>"},
        add_special=LLAMA3_SPECIALS, template=None, config={"eos_token": "<x2>"})))
    assert choose(only_llama).name == "llama-3"
    plain = load_text_tokenizer(str(tokenizer_copy(
        embedded_model, tmp_path / "p", rename={"<|im_start|>": "<s>", "<|im_end|>": "</s>"}, template=None,
        config={"bos_token": "<s>", "eos_token": "</s>"})))
    alpaca = choose(plain)
    assert alpaca.name == "alpaca" and alpaca.end_of_turn == "</s>"
    with pytest.raises(DataError) as refused:
        choose(smol, "llama-3")
    assert "(<|start_header_id|>, <|end_header_id|>, <|eot_id|>)" in refused.value.one_line()
    assert "supports: auto, chatml, alpaca" in refused.value.one_line()


def test_pad_choice():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|reserved_special_token_0|>", "<|fim_pad|>"]
    template = "<|im_start|>{{ m }}<|im_end|>"
    taken = {"<|im_end|>", "<|im_start|>"}
    assert choose_pad_token("<|endoftext|>", taken, None, specials, template) == "<|endoftext|>"
    assert choose_pad_token("<|im_end|>", taken, None, specials, template) == "<|fim_pad|>"
    assert choose_pad_token(None, taken, "<unk>", specials[:4], template) == "<unk>"
    assert choose_pad_token(None, taken, None, specials[:4], template) == "<|reserved_special_token_0|>"
    assert choose_pad_token(None, taken, None, specials[:3], template) == "<|endoftext|>"
    assert choose_pad_token("<|im_end|>", taken, "<|im_end|>", specials[1:3], template) == NEW_PAD_TOKEN


def test_hf_tokenizer_gets_the_reported_pad_and_template_eos(tmp_path, embedded_model, llama3_folder):
    """backends/hf.py `load` sets the pad `data inspect` reports; the saved tokenizer ends replies like the data."""
    from transformers import AutoTokenizer

    from slothctl.backends import LoadOptions
    from slothctl.backends.hf import HFBackend
    from slothctl.data.templates import apply_template, configure_hf_tokenizer

    model_dir = tokenizer_copy(embedded_model, tmp_path / "m", config={"pad_token": "<|im_end|>"})
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (model_dir / name).symlink_to(embedded_model / name)
    cfg = config_for(tmp_path / "d.jsonl", model_dir)
    model, tokenizer = HFBackend().load(cfg.model, str(model_dir), LoadOptions.of(cfg))
    report_tok = load_text_tokenizer(str(model_dir))
    assert report_tok.pad_token == "<|im_end|>" == report_tok.eos_token  # the files say pad = eos
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 0 != tokenizer.eos_token_id
    assert model.config.pad_token_id == 0

    # Nothing unused in the vocabulary: a new pad token is added and the embeddings grow to hold it.
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    bare = tokenizer_copy(embedded_model, tmp_path / "bare", config={"pad_token": None, "unk_token": None},
                          only_special=["<|im_start|>", "<|im_end|>"])
    tokenizer = AutoTokenizer.from_pretrained(bare)
    tiny = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    before = len(tokenizer)
    assert configure_hf_tokenizer(cfg.data.chat_template, tokenizer, tiny) == NEW_PAD_TOKEN
    assert tokenizer.pad_token_id == before and tiny.get_input_embeddings().num_embeddings >= before + 1
    assert tiny(torch.tensor([[tokenizer.pad_token_id, 5]])).logits.shape[-1] >= before + 1

    llama = AutoTokenizer.from_pretrained(llama3_folder)
    template = choose_chat_template("llama-3", None, "<|end_of_text|>", lambda t: True)
    apply_template(llama, template)
    assert llama.eos_token == "<|eot_id|>" and llama.chat_template == template.source


LOOP = "{% for message in messages %}X{% endfor %}"


@pytest.mark.parametrize("template, verdict", [
    (LOOP.replace("X", "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"), "opaque"),
    (LOOP.replace("X", "{{ message.content | trim }}{% if message.content is string %}!{% endif %}"), "opaque"),
    (LOOP.replace("X", "{{ message.content if loop.last else 'x' ~ message.content }}"), "opaque"),
    (LOOP.replace("X", "{% if not message.content %}(empty){% endif %}{{ message.content }}"), "truthiness"),
    (LOOP.replace("X", "{{ message.content.split('</think>')[-1] }}"), "inspected"),
    (LOOP.replace("X", "{% if '</think>' in message['content'] %}R{% endif %}"), "inspected"),
    (LOOP.replace("X", "{{ message.get('content') }}"), "inspected"),
    (LOOP.replace("X", "{% set c %}{{ message.content }}{% endset %}{{ c | upper }}"), "inspected"),
    (LOOP.replace("X", "{% filter upper %}{{ message.content }}{% endfilter %}"), "inspected"),
    (LOOP.replace("X", "{% set c = message.content %}{{ c }}"), "inspected"),
    (LOOP.replace("X", "{{ message | tojson }}"), "inspected"),
    (LOOP.replace("X", "{{ message.content | upper }}"), "inspected"),
])
def test_content_use_is_conservative(template, verdict):
    assert content_use(template) == verdict


def _naive_mask(positions, lengths, units, max_length):
    """Token by token: trained when its position falls in a trained segment; the first max_length per row."""
    ranges, offset = [], 0
    for segments in units:
        for size, trained in segments:
            if trained and size:
                ranges.append((offset, offset + size))
            offset += size
    ids, flags, start = [], [], 0
    for length in lengths:
        for k in range(min(length, max_length)):
            p = positions[start + k]
            ids.append(start + k)
            flags.append(any(low <= p < high for low, high in ranges))
        start += length
    return ids, flags


@pytest.mark.parametrize("ascending", [True, False])
def test_mask_and_truncation_match_a_token_by_token_reference(ascending):
    """encode._masked: positions in order take two binary searches per segment, out of order one per token;
    both must mark what a token-by-token check marks, and cut each row after max_length tokens."""
    import numpy as np

    from slothctl.data.encode import _masked

    rng = random.Random(7)
    for _ in range(400):
        units, lengths, positions, base = [], [], [], 0
        for _row in range(rng.randint(1, 5)):
            segments = [(rng.randint(0, 9), rng.random() < 0.5) for _ in range(rng.randint(1, 4))]
            total = sum(size for size, _ in segments)
            starts = sorted(rng.sample(range(total), rng.randint(0, total))) if total else []
            units.append(segments)
            lengths.append(len(starts))
            positions += [base + s for s in starts]
            base += total
        if not ascending and len(positions) > 1:
            first, last = 0, lengths[0] - 1 if lengths[0] else 0
            positions[first], positions[last] = positions[last], positions[first]  # a row's offsets out of order
        max_length = rng.randint(1, 6)
        got = _masked(np.arange(len(positions), dtype=np.int32), np.asarray(positions, dtype=np.int64),
                      np.asarray(lengths, dtype=np.int64), units, max_length)
        ids, flags = _naive_mask(positions, lengths, units, max_length)
        assert got.ids.tolist() == ids and got.trained.tolist() == flags
        assert got.full_lengths.tolist() == lengths and got.lengths.tolist() == [min(n, max_length) for n in lengths]
