"""Small tokenizers built locally for the data tests (no downloads).

- :func:`chatml_tokenizer`: byte-level BPE, no BOS (``bos_token`` None, like Qwen), ChatML
  template whose end-of-turn ``<|im_end|>`` is the EOS.
- :func:`bos_tokenizer`: adds ``<bos>`` on encode and its template starts with the BOS string
  (like Gemma); end of turn ``<end_of_turn>`` differs from EOS ``<eos>``.
- :func:`plain_tokenizer`: no BOS, no template, EOS ``</s>``.
- :func:`d4_tokenizer`: a template whose generation prompt ``"<A>\\n<T>\\n"`` is not a prefix of
  the rendered reply ``"<A>\\n" + content + "<E>"`` (case D4).
All decode byte-exactly (byte-level BPE), so scored ids can be checked against the text.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "Human: What is 2+2?\n\nAssistant: It is 4. No, it is 5.",
    "The quick brown fox jumps over the lazy dog. Be brief. Question, Completed answer, Wrong.",
    "Hello world! How are you today? I am fine, thank you very much. What about you?",
    "Assistant: I can't help with that. Human: Why not? Assistant: Because it is unsafe.",
    "ok okay the answer is yes no maybe 0123456789 ,.;:!?'\"()[]{}<>-_=+*/\\ \n\t",
] * 5

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA_LIKE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>"
    "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
D4_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<A>\n{{ m['content'] }}<E>"
    "{% else %}User: {{ m['content'] }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<A>\n<T>\n{% endif %}"
)


def _bpe(specials: list[str], vocab_size: int = 420) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@functools.cache
def chatml_tokenizer():
    tok = _bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    t = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    t.chat_template = CHATML
    assert t.bos_token is None and t.bos_token_id is None
    return t


@functools.cache
def bos_tokenizer():
    tok = _bpe(["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)]
    )
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    t.chat_template = GEMMA_LIKE
    assert t.encode("ok")[0] == t.bos_token_id == 1
    return t


@functools.cache
def plain_tokenizer():
    tok = _bpe(["<pad>", "</s>"])
    t = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>")
    assert t.bos_token_id is None and t.chat_template is None
    return t


@functools.cache
def d4_tokenizer():
    tok = _bpe(["<pad>", "<A>", "<T>", "<E>"])
    t = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<E>", pad_token="<pad>")
    t.chat_template = D4_TEMPLATE
    return t


@functools.cache
def sentencepiece_like_tokenizer():
    """Llama-style SentencePiece BPE: a word-start piece is prepended to a text that does not
    start with one (dummy prefix), byte fallback, decoder strips the first space; adds BOS."""
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<pad>", "<bos>", "<eos>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=420, special_tokens=specials, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


ALL = {"chatml": chatml_tokenizer, "bos": bos_tokenizer, "plain": plain_tokenizer}
