#!/usr/bin/python3
"""PyTorch reference outputs for qtune's parity tests (tests/models/parity.test.ts).

Writes, for each tiny configuration, a Hugging Face style folder under tests/fixtures/parity/<name>/:
  config.json, model.safetensors (f32)       the model, randomly initialised from a seed
  reference.json                              ids, labels, loss, LoRA settings, shapes
  logits.bin                                  f32 logits [B, T, vocab] of the model
  lora.safetensors                            the rank-8 LoRA weights on q_proj and v_proj
  lora_grads.safetensors                      d(loss)/d(LoRA weights)
and, for the trainer's own adapters (tests/train/lora-parity.test.ts), under
tests/fixtures/lora-parity/<case>/ (lora, rslora, dora, patterns; the llama_gqa model, every linear layer):
  reference.json                              ids, labels, the PEFT-style settings, per-module r/alpha/scale, loss
  adapter.safetensors                         <module>.lora_A, .lora_B (and DoRA's .lora_magnitude)
  grads.safetensors                           d(loss)/d(each of them)

The model is written here from the math of Hugging Face's modeling_llama / _qwen2 / _qwen3 / _mistral / _smollm3 / _phi3 /
_gemma2 / _gemma3 (RMSNorm, rotate-half RoPE with llama3 frequency scaling, grouped-query attention by repeat_interleave,
causal softmax, SwiGLU, Qwen3's per-head q/k RMSNorm, sliding windows, SmolLM3's NoPE layers, Gemma's GeGLU and
sandwich norms, Gemma 2's soft-capping), in float64 for the reference values, independently of qtune.

Run with Debian's PyTorch:   /usr/bin/python3 scripts/torch_reference.py && npx prettier --write tests/fixtures
(or name the parity configurations to write only those: scripts/torch_reference.py qwen3_qk_norm)
"""
import json
import math
import os
import re
import struct

import torch

torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'fixtures', 'parity')

CONFIGS = {
    # Llama with grouped-query attention, untied embeddings
    'llama_gqa': dict(model_type='llama', vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
                      max_position_embeddings=128, tie_word_embeddings=False, rope_scaling=None),
    # Qwen2: biases on q, k, v; tied embeddings
    'qwen2_bias_tied': dict(model_type='qwen2', vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-6, rope_theta=1000000.0,
                            max_position_embeddings=128, tie_word_embeddings=True, rope_scaling=None),
    # Llama 3.1 style rope scaling, tied embeddings
    'llama3_rope_scaling': dict(model_type='llama', vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=500000.0,
                                max_position_embeddings=128, tie_word_embeddings=True,
                                rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                                  original_max_position_embeddings=16)),
    # Qwen3: an RMSNorm over each query and key head before RoPE, no biases, head_dim twice
    # hidden_size / num_attention_heads (as Qwen3-0.6B: 1024 / 16 heads, head_dim 128), tied
    'qwen3_qk_norm': dict(model_type='qwen3', vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
                          rope_theta=1000000.0, max_position_embeddings=128, tie_word_embeddings=True,
                          rope_scaling=None, attention_bias=False),
    # Mistral's sliding window, shorter than the sequence: query i sees keys i-4 .. i
    'mistral_sliding_window': dict(model_type='mistral', vocab_size=256, hidden_size=64, intermediate_size=160,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                                   rope_theta=10000.0, max_position_embeddings=128, tie_word_embeddings=False,
                                   rope_scaling=None, sliding_window=5),
    # Qwen2 with use_sliding_window: layers from max_window_layers on use the window, layer 0 attends fully
    'qwen2_window_layers': dict(model_type='qwen2', vocab_size=256, hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                                rope_theta=1000000.0, max_position_embeddings=128, tie_word_embeddings=True,
                                rope_scaling=None, use_sliding_window=True, sliding_window=4, max_window_layers=1),
    # SmolLM3: no RoPE in every fourth layer (HF's default no_rope_layers, written out), tied
    'smollm3_nope': dict(model_type='smollm3', vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=5000000.0,
                         max_position_embeddings=128, tie_word_embeddings=True, rope_scaling=None,
                         attention_bias=False, no_rope_layers=[1, 1, 1, 0]),
    # Phi-3/4-mini: fused qkv_proj and gate_up_proj (the LoRA on the fused qkv_proj and o_proj), RoPE on
    # half of each head (Phi-4-mini's partial_rotary_factor is 0.75), untied
    'phi3_fused': dict(model_type='phi3', vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
                       max_position_embeddings=128, tie_word_embeddings=False, rope_scaling=None,
                       partial_rotary_factor=0.5, lora_targets=('qkv_proj', 'o_proj')),
    # Phi-3.5-mini's LongRoPE: 12 tokens past an original context of 8, so the long factors apply, and
    # cos/sin scaled by sqrt(1 + ln(128 / 8) / ln(8))
    'phi3_longrope': dict(model_type='phi3', vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=10000.0,
                          max_position_embeddings=128, original_max_position_embeddings=8, tie_word_embeddings=False,
                          rope_scaling=dict(type='longrope', short_factor=[1.0 + 0.05 * i for i in range(8)],
                                            long_factor=[1.0 + 0.9 * i for i in range(8)]),
                          lora_targets=('qkv_proj', 'gate_up_proj')),
    # Gemma 3 (text): GeGLU with tanh-GELU, (1 + w) norms before and after attention and MLP, embeddings
    # times sqrt(hidden), q/k norms, scores scaled by query_pre_attn_scalar^-1/2 (not head_dim's), and
    # sliding_window_pattern 2: layer 0 local (window 5, its own RoPE base), layer 1 global (rope_theta,
    # linear scaling)
    'gemma3_local_global': dict(model_type='gemma3_text', vocab_size=256, hidden_size=64, intermediate_size=128,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
                                max_position_embeddings=128, tie_word_embeddings=True,
                                rope_scaling=dict(rope_type='linear', factor=8.0), sliding_window=5,
                                sliding_window_pattern=2, query_pre_attn_scalar=24, hidden_activation='gelu_pytorch_tanh'),
    # Gemma 2: Gemma 3's block without q/k norms and with one RoPE base, layer 0 local (window 5) and
    # layer 1 global (HF's alternation), and both soft-caps small enough that tanh is far from linear:
    # the scaled attention scores (|s| 0.6 on average, up to 2.7) capped at 0.5, the logits (|z| 0.6, up to 3.9) at 0.8
    'gemma2_softcap': dict(model_type='gemma2', vocab_size=256, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                           rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=128,
                           tie_word_embeddings=True, rope_scaling=None, sliding_window=5,
                           query_pre_attn_scalar=24, attn_logit_softcapping=0.5, final_logit_softcapping=0.8,
                           hidden_activation='gelu_pytorch_tanh'),
}
B, T = 2, 12
RANK, ALPHA = 8, 16
TARGETS = ('q_proj', 'v_proj')


def head_dim(c):
    return c.get('head_dim', c['hidden_size'] // c['num_attention_heads'])


def weights(c, gen):
    hd = head_dim(c)
    H, K, C, F = c['num_attention_heads'], c['num_key_value_heads'], c['hidden_size'], c['intermediate_size']
    w = {}
    rnd = lambda *s: torch.randn(*s, generator=gen) * 0.1
    gemma = c['model_type'] in ('gemma3_text', 'gemma2')
    one = 0 if gemma else 1  # Gemma stores a norm's weight as its offset from 1
    w['model.embed_tokens.weight'] = rnd(c['vocab_size'], C)
    for i in range(c['num_hidden_layers']):
        p = f'model.layers.{i}'
        w[f'{p}.input_layernorm.weight'] = one + rnd(C)
        if c['model_type'] == 'phi3':
            w[f'{p}.self_attn.qkv_proj.weight'] = rnd((H + 2 * K) * hd, C)
        else:
            w[f'{p}.self_attn.q_proj.weight'] = rnd(H * hd, C)
            w[f'{p}.self_attn.k_proj.weight'] = rnd(K * hd, C)
            w[f'{p}.self_attn.v_proj.weight'] = rnd(K * hd, C)
        if c['model_type'] == 'qwen2':
            w[f'{p}.self_attn.q_proj.bias'] = rnd(H * hd)
            w[f'{p}.self_attn.k_proj.bias'] = rnd(K * hd)
            w[f'{p}.self_attn.v_proj.bias'] = rnd(K * hd)
        if c['model_type'] in ('qwen3', 'gemma3_text'):
            w[f'{p}.self_attn.q_norm.weight'] = one + rnd(hd)
            w[f'{p}.self_attn.k_norm.weight'] = one + rnd(hd)
        w[f'{p}.self_attn.o_proj.weight'] = rnd(C, H * hd)
        w[f'{p}.post_attention_layernorm.weight'] = one + rnd(C)
        if gemma:
            w[f'{p}.pre_feedforward_layernorm.weight'] = rnd(C)
            w[f'{p}.post_feedforward_layernorm.weight'] = rnd(C)
        if c['model_type'] == 'phi3':
            w[f'{p}.mlp.gate_up_proj.weight'] = rnd(2 * F, C)
        else:
            w[f'{p}.mlp.gate_proj.weight'] = rnd(F, C)
            w[f'{p}.mlp.up_proj.weight'] = rnd(F, C)
        w[f'{p}.mlp.down_proj.weight'] = rnd(C, F)
    w['model.norm.weight'] = one + rnd(C)
    if not c['tie_word_embeddings']:
        w['lm_head.weight'] = rnd(c['vocab_size'], C)
    return w


def rotary_dims(c):
    return int(head_dim(c) * c.get('partial_rotary_factor', 1.0))


def inv_freq(c, hd, base=None):
    freq = 1.0 / ((base or c['rope_theta']) ** (torch.arange(0, hd, 2) / hd))
    rs = None if base is not None else c['rope_scaling']  # Gemma 3's local layers: their base, unscaled
    if rs is None:
        return freq
    if rs.get('rope_type') == 'linear':
        return freq / rs['factor']
    if rs.get('type') == 'longrope':  # HF's dynamic LongRoPE: long factors past the original context
        ext = rs['long_factor'] if T > c['original_max_position_embeddings'] else rs['short_factor']
        return freq / torch.tensor(ext)
    low_wavelen = rs['original_max_position_embeddings'] / rs['low_freq_factor']
    high_wavelen = rs['original_max_position_embeddings'] / rs['high_freq_factor']
    out = []
    for f in freq.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(f)
        elif wavelen > low_wavelen:
            out.append(f / rs['factor'])
        else:
            smooth = (rs['original_max_position_embeddings'] / wavelen - rs['low_freq_factor']) / (rs['high_freq_factor'] - rs['low_freq_factor'])
            out.append((1 - smooth) * f / rs['factor'] + smooth * f)
    return torch.tensor(out)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(c, w, lora, ids):
    H, K = c['num_attention_heads'], c['num_key_value_heads']
    hd = head_dim(c)
    rd = rotary_dims(c)
    pos = torch.arange(T, dtype=torch.float64)

    def cos_sin(base=None):
        ang = torch.outer(pos, inv_freq(c, rd, base))
        emb = torch.cat((ang, ang), dim=-1)
        return emb.cos(), emb.sin()

    cos, sin = cos_sin()
    local_cos, local_sin = cos_sin(c['rope_local_base_freq']) if 'rope_local_base_freq' in c else (cos, sin)
    rs = c['rope_scaling']
    if rs is not None and rs.get('type') == 'longrope':
        s = c['max_position_embeddings'] / c['original_max_position_embeddings']
        att = math.sqrt(1 + math.log(s) / math.log(c['original_max_position_embeddings'])) if s > 1 else 1.0
        cos, sin = cos * att, sin * att
    gemma = c['model_type'] in ('gemma3_text', 'gemma2')

    def norm(x, name):  # Gemma3RMSNorm scales by (1 + w)
        return rms_norm(x, (1 + w[name]) if gemma else w[name], c['rms_norm_eps'])

    def rotate(x, cos, sin):  # RoPE on the first rd dims of each head, the rest passed through
        xr, xp = x[..., :rd], x[..., rd:]
        return torch.cat((xr * cos + rotate_half(xr) * sin, xp), dim=-1)
    mask = torch.full((T, T), float('-inf')).triu(1)
    # HF's sliding-window overlay: key j is seen by query i when j > i - sliding_window
    window = c.get('sliding_window') if c['model_type'] in ('mistral', 'gemma3_text', 'gemma2') or c.get('use_sliding_window') else None
    window_mask = mask if window is None else mask.masked_fill(torch.arange(T)[None, :] <= torch.arange(T)[:, None] - window, float('-inf'))
    first_window_layer = c.get('max_window_layers', 0) if c['model_type'] != 'mistral' else 0

    def lin(x, name):
        y = x @ w[f'{name}.weight'].T
        if f'{name}.bias' in w:
            y = y + w[f'{name}.bias']
        if name in lora:
            ad = lora[name]
            if isinstance(ad, tuple):  # the rank-8 q/v LoRA of the parity fixtures
                ad = dict(A=ad[0], B=ad[1], s=ALPHA / RANK)
            a, b, s = ad['A'], ad['B'], ad['s']
            delta = s * ((x @ a.T) @ b.T)
            if 'm' in ad:
                # DoRA (PEFT): m * (W x + s B A x) / ||W + s B A||, the row norm detached
                wn = (w[f'{name}.weight'] + s * (b @ a)).norm(dim=1).detach()
                base = x @ w[f'{name}.weight'].T
                return y - base + (ad['m'] / wn) * (base + delta)
            y = y + delta
        return y

    x = w['model.embed_tokens.weight'][ids]
    if gemma:
        x = x * math.sqrt(c['hidden_size'])
    for i in range(c['num_hidden_layers']):
        p = f'model.layers.{i}'
        # Gemma 3: every pattern-th layer global, the others local (window, own RoPE base); Gemma 2:
        # every other one (HF's layer_types default: sliding where (i + 1) % 2 != 0)
        local = gemma and (i + 1) % c.get('sliding_window_pattern', 2) != 0
        n = norm(x, f'{p}.input_layernorm.weight')
        if c['model_type'] == 'phi3':  # one fused product, split into q, k, v
            q, k, v = lin(n, f'{p}.self_attn.qkv_proj').split([H * hd, K * hd, K * hd], dim=-1)
        else:
            q, k, v = (lin(n, f'{p}.self_attn.{x}_proj') for x in 'qkv')
        q = q.reshape(B, T, H, hd).transpose(1, 2)
        k = k.reshape(B, T, K, hd).transpose(1, 2)
        v = v.reshape(B, T, K, hd).transpose(1, 2)
        if c['model_type'] in ('qwen3', 'gemma3_text'):  # q_norm/k_norm over each head's hd values
            q = norm(q, f'{p}.self_attn.q_norm.weight')
            k = norm(k, f'{p}.self_attn.k_norm.weight')
        if c.get('no_rope_layers', [1] * c['num_hidden_layers'])[i]:  # SmolLM3's NoPE layers skip it
            cs = (local_cos, local_sin) if local else (cos, sin)
            q, k = rotate(q, *cs), rotate(k, *cs)
        k = k.repeat_interleave(H // K, dim=1)
        v = v.repeat_interleave(H // K, dim=1)
        m = window_mask if (local if gemma else i >= first_window_layer) else mask
        scores = q @ k.transpose(-1, -2) / math.sqrt(c.get('query_pre_attn_scalar', hd))
        if c.get('attn_logit_softcapping') is not None:  # Gemma 2: cap the scaled scores, then mask
            cap = c['attn_logit_softcapping']
            scores = cap * torch.tanh(scores / cap)
        att = torch.softmax(scores + m, dim=-1)
        o = lin((att @ v).transpose(1, 2).reshape(B, T, H * hd), f'{p}.self_attn.o_proj')
        if gemma:  # Gemma's sandwich: norm the attention's output, and the MLP's input and output
            x = x + norm(o, f'{p}.post_attention_layernorm.weight')
            n = norm(x, f'{p}.pre_feedforward_layernorm.weight')
        else:
            x = x + o
            n = norm(x, f'{p}.post_attention_layernorm.weight')
        if c['model_type'] == 'phi3':  # Phi3MLP: gate and up are the two halves of one product
            gate, up = lin(n, f'{p}.mlp.gate_up_proj').chunk(2, dim=-1)
        else:
            gate, up = lin(n, f'{p}.mlp.gate_proj'), lin(n, f'{p}.mlp.up_proj')
        if gemma:  # GeGLU with the tanh approximation of GELU (gelu_pytorch_tanh)
            mlp = lin(torch.nn.functional.gelu(gate, approximate='tanh') * up, f'{p}.mlp.down_proj')
            x = x + norm(mlp, f'{p}.post_feedforward_layernorm.weight')
        else:
            x = x + lin(torch.nn.functional.silu(gate) * up, f'{p}.mlp.down_proj')
    x = norm(x, 'model.norm.weight')
    head = w['model.embed_tokens.weight'] if c['tie_word_embeddings'] else w['lm_head.weight']
    logits = x @ head.T
    if c.get('final_logit_softcapping') is not None:  # Gemma 2's capped logits
        cap = c['final_logit_softcapping']
        logits = cap * torch.tanh(logits / cap)
    return logits


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().to(torch.float32).contiguous().numpy().tobytes()
        header[name] = dict(dtype='F32', shape=list(t.shape), data_offsets=[off, off + len(data)])
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b' ' * ((8 - (8 + len(h)) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main(only):
    models = {}
    for k, (name, c) in enumerate(CONFIGS.items()):
        if only and name not in only:
            continue
        gen = torch.Generator().manual_seed(1234 + k)
        w = weights(c, gen)
        # the checkpoint holds f32 values: compute the reference from exactly those
        w = {n: t.to(torch.float32).to(torch.float64) for n, t in w.items()}
        ids = torch.randint(0, c['vocab_size'], (B, T), generator=gen)
        labels = torch.cat((ids[:, 1:], torch.full((B, 1), -100)), dim=1)
        labels[0, :3] = -100  # a masked prompt
        lora = {}
        for i in range(c['num_hidden_layers']):
            for t in c.get('lora_targets', TARGETS):
                name_ = f'model.layers.{i}.{"mlp" if "up" in t else "self_attn"}.{t}'
                out_dim = w[f'{name_}.weight'].shape[0]
                a = (torch.randn(RANK, c['hidden_size'], generator=gen) * 0.1).to(torch.float32).to(torch.float64)
                b = (torch.randn(out_dim, RANK, generator=gen) * 0.1).to(torch.float32).to(torch.float64)
                lora[name_] = (a.requires_grad_(), b.requires_grad_())
        logits = forward(c, w, {}, ids)
        lora_logits = forward(c, w, lora, ids)
        loss = torch.nn.functional.cross_entropy(lora_logits.reshape(-1, c['vocab_size']), labels.reshape(-1), ignore_index=-100)
        loss.backward()

        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        act = {} if 'hidden_activation' in c else dict(hidden_act='silu')
        cfg = dict(c, head_dim=head_dim(c), **act, torch_dtype='float32')
        targets = list(cfg.pop('lora_targets', TARGETS))
        if c['model_type'] in ('qwen2', 'qwen3', 'smollm3'):
            cfg.setdefault('use_sliding_window', False)
        json.dump(cfg, open(os.path.join(d, 'config.json'), 'w'), indent=2)
        write_safetensors(os.path.join(d, 'model.safetensors'), w)
        lora_tensors, grad_tensors = {}, {}
        for n_, (a, b) in lora.items():
            lora_tensors[f'{n_}.lora_A.weight'] = a
            lora_tensors[f'{n_}.lora_B.weight'] = b
            grad_tensors[f'{n_}.lora_A.weight'] = a.grad
            grad_tensors[f'{n_}.lora_B.weight'] = b.grad
        write_safetensors(os.path.join(d, 'lora.safetensors'), lora_tensors)
        write_safetensors(os.path.join(d, 'lora_grads.safetensors'), grad_tensors)
        with open(os.path.join(d, 'logits.bin'), 'wb') as f:
            f.write(logits.detach().to(torch.float32).numpy().tobytes())
        json.dump(dict(batch=B, seq=T, ids=ids.tolist(), labels=labels.tolist(), lora_rank=RANK, lora_alpha=ALPHA,
                       lora_targets=targets, loss=loss.item(), torch=torch.__version__),
                  open(os.path.join(d, 'reference.json'), 'w'), indent=1)
        print(f'{name}: loss {loss.item():.6f}, logits {tuple(logits.shape)}')
        models[name] = w
    if 'llama_gqa' in models:
        trainer_lora_cases(models['llama_gqa'], CONFIGS['llama_gqa'])


# ---- the trainer's own adapters (tests/train/lora-parity.test.ts)
LORA_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'fixtures', 'lora-parity')
LINEAR = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
# Each case runs on the llama_gqa fixture's model with every linear layer adapted (the trainer's
# default targets). Patterns are PEFT's: keys are regular expressions matched against the end of the
# module's full name after a dot (or against all of it), and the first key in the dict's order wins.
LORA_CASES = {
    'lora': dict(r=8, lora_alpha=16),
    'rslora': dict(r=8, lora_alpha=16, use_rslora=True),
    'dora': dict(r=8, lora_alpha=16, use_dora=True),
    'patterns': dict(r=8, lora_alpha=16,
                     # layer 1's q_proj: the anchored full name comes first, so it wins over 'q_proj'
                     rank_pattern={'^model.layers.1.self_attn.q_proj': 2, 'q_proj': 4, r'mlp\.(gate|up)_proj': 6},
                     # layer 0's v_proj: 'v_proj' comes first, so 32 although 'layers\.0\..*' also matches
                     alpha_pattern={'v_proj': 32, r'layers\.0\..*': 8}),
}


def peft_pattern(patterns, module):
    """PEFT's choice of a rank/alpha pattern key: the first key, in order, that matches."""
    for key in patterns:
        if re.match(r'(.*\.)?(' + key + r')$', module):
            return key
    return None


def trainer_lora_cases(w, c):
    for k, (case, o) in enumerate(LORA_CASES.items()):
        gen = torch.Generator().manual_seed(4321 + k)
        ids = torch.randint(0, c['vocab_size'], (B, T), generator=gen)
        labels = torch.cat((ids[:, 1:], torch.full((B, 1), -100)), dim=1)
        labels[1, :4] = -100  # a masked prompt
        adapters, modules = {}, {}
        for i in range(c['num_hidden_layers']):
            for short in LINEAR:
                name = f'model.layers.{i}.{"mlp" if short in ("gate_proj", "up_proj", "down_proj") else "self_attn"}.{short}'
                rk = peft_pattern(o.get('rank_pattern', {}), name)
                ak = peft_pattern(o.get('alpha_pattern', {}), name)
                r = o['rank_pattern'][rk] if rk is not None else o['r']
                alpha = o['alpha_pattern'][ak] if ak is not None else o['lora_alpha']
                s = alpha / math.sqrt(r) if o.get('use_rslora') else alpha / r
                W = w[f'{name}.weight']
                f32 = lambda t: t.to(torch.float32).to(torch.float64)
                ad = dict(A=f32(torch.randn(r, W.shape[1], generator=gen) * 0.1).requires_grad_(),
                          B=f32(torch.randn(W.shape[0], r, generator=gen) * 0.1).requires_grad_(), s=s)
                if o.get('use_dora'):
                    # a trained magnitude: the row norms of W, perturbed
                    ad['m'] = f32(W.norm(dim=1) * (1 + 0.2 * torch.randn(W.shape[0], generator=gen))).requires_grad_()
                adapters[name] = ad
                modules[name] = dict(rank=r, alpha=alpha, scale=s)
        logits = forward(c, w, adapters, ids)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, c['vocab_size']), labels.reshape(-1), ignore_index=-100)
        loss.backward()
        values, grads = {}, {}
        for name, ad in adapters.items():
            for part, key in (('A', 'lora_A'), ('B', 'lora_B'), ('m', 'lora_magnitude')):
                if part in ad:
                    values[f'{name}.{key}'] = ad[part]
                    grads[f'{name}.{key}'] = ad[part].grad
        d = os.path.join(LORA_OUT, case)
        os.makedirs(d, exist_ok=True)
        write_safetensors(os.path.join(d, 'adapter.safetensors'), values)
        write_safetensors(os.path.join(d, 'grads.safetensors'), grads)
        json.dump(dict(model='llama_gqa', batch=B, seq=T, ids=ids.tolist(), labels=labels.tolist(), peft_config=o,
                       modules=modules, loss=loss.item(), torch=torch.__version__),
                  open(os.path.join(d, 'reference.json'), 'w'), indent=1)
        print(f'lora-parity/{case}: loss {loss.item():.6f}')


if __name__ == '__main__':
    import sys
    main(set(sys.argv[1:]))
