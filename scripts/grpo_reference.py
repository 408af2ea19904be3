#!/usr/bin/python3
"""PyTorch reference of GRPO's per-token loss for tests/train/grpo-parity.test.ts.

On the parity fixture's Llama (tests/fixtures/parity/llama_gqa, read from its model.safetensors) with
a rank-8 LoRA on every linear layer (values drawn here), four completions of two prompts (G = 2), it
computes in float64, as TRL's GRPOTrainer._compute_loss does:
  logp      the policy's (base + LoRA) log-prob of each completion token
  ref       the reference's (the base, LoRA off) log-prob of each completion token
  coef_1    exp(logp - logp.detach())                      (one update per generation: ratio 1)
  loss_t    -min(coef_1 * A, clamp(coef_1, 1 - eps, 1 + eps) * A) + beta * (exp(ref - logp) - (ref - logp) - 1)
  loss      sum(loss_t * mask) / sum(mask)                  (loss_type 'dapo', TRL's default)
and d(loss)/d(LoRA A, B) by autograd. Writes tests/fixtures/grpo-parity/: reference.json (ids,
labels, advantages, beta, epsilon, the loss, logp and ref per token), adapter.safetensors, grads.safetensors.

Run with Debian's PyTorch:   /usr/bin/python3 scripts/grpo_reference.py && npx prettier --write tests/fixtures/grpo-parity
"""
import json
import math
import os
import struct

import torch

import torch_reference as ref_model

torch.set_default_dtype(torch.float64)
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, '..', 'tests', 'fixtures', 'parity', 'llama_gqa')
OUT = os.path.join(HERE, '..', 'tests', 'fixtures', 'grpo-parity')
B, T = 4, 12
G = 2
BETA, EPS = 0.04, 0.2
R, ALPHA = 8, 16


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == '__metadata__':
            continue
        a, b = h['data_offsets']
        t = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(h['shape'])
        out[name] = t.to(torch.float64)
    return out


def main():
    c = json.load(open(os.path.join(MODEL, 'config.json')))
    w = read_safetensors(os.path.join(MODEL, 'model.safetensors'))
    ref_model.B, ref_model.T = B, T  # forward() reads the batch shape from its module
    gen = torch.Generator().manual_seed(777)
    # two prompts of 4 and 5 tokens, each with G = 2 completions of different lengths
    prompts = [torch.randint(0, c['vocab_size'], (n,), generator=gen).tolist() for n in (4, 5)]
    lengths = [3, 6, 2, 5]
    ids, labels = [], []
    for i, n in enumerate(lengths):
        p = prompts[i // G]
        seq = p + torch.randint(0, c['vocab_size'], (n,), generator=gen).tolist()
        row_ids = seq[:-1] + [0] * (T - len(seq) + 1)
        row_labels = [seq[t + 1] if t + 1 >= len(p) else -100 for t in range(len(seq) - 1)] + [-100] * (T - len(seq) + 1)
        ids.append(row_ids)
        labels.append(row_labels)
    ids_t = torch.tensor(ids)
    labels_t = torch.tensor(labels)
    mask = (labels_t != -100).to(torch.float64)
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0])
    grouped = rewards.view(-1, G)
    adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).reshape(-1)

    adapters = {}
    f32 = lambda t: t.to(torch.float32).to(torch.float64)
    for i in range(c['num_hidden_layers']):
        for short in ref_model.LINEAR:
            name = f'model.layers.{i}.{"mlp" if short in ("gate_proj", "up_proj", "down_proj") else "self_attn"}.{short}'
            W = w[f'{name}.weight']
            adapters[name] = dict(A=f32(torch.randn(R, W.shape[1], generator=gen) * 0.1).requires_grad_(),
                                  B=f32(torch.randn(W.shape[0], R, generator=gen) * 0.1).requires_grad_(), s=ALPHA / R)

    def token_logps(lora):
        logits = ref_model.forward(c, w, lora, ids_t)
        lp = torch.log_softmax(logits, dim=-1)
        return lp.gather(-1, labels_t.clamp(min=0).unsqueeze(-1)).squeeze(-1)

    with torch.no_grad():
        ref = token_logps({})
    logp = token_logps(adapters)
    coef_1 = torch.exp(logp - logp.detach())
    coef_2 = torch.clamp(coef_1, 1 - EPS, 1 + EPS)
    a = adv.unsqueeze(1)
    per_token = -torch.min(coef_1 * a, coef_2 * a)
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    per_token = per_token + BETA * kl
    loss = (per_token * mask).sum() / mask.sum()
    loss.backward()

    values, grads = {}, {}
    for name, ad in adapters.items():
        values[f'{name}.lora_A'], grads[f'{name}.lora_A'] = ad['A'], ad['A'].grad
        values[f'{name}.lora_B'], grads[f'{name}.lora_B'] = ad['B'], ad['B'].grad
    os.makedirs(OUT, exist_ok=True)
    ref_model.write_safetensors(os.path.join(OUT, 'adapter.safetensors'), values)
    ref_model.write_safetensors(os.path.join(OUT, 'grads.safetensors'), grads)
    counted = lambda x: [[v for v, m in zip(row, mrow) if m] for row, mrow in zip(x.tolist(), mask.tolist())]
    json.dump(dict(model='llama_gqa', batch=B, seq=T, num_generations=G, ids=ids, labels=labels,
                   rewards=rewards.tolist(), advantages=adv.tolist(), beta=BETA, epsilon=EPS, loss_type='dapo',
                   lora=dict(r=R, lora_alpha=ALPHA), loss=loss.item(), logp=counted(logp.detach()), ref=counted(ref),
                   kl=((kl * mask).sum() / mask.sum()).item(), torch=torch.__version__),
              open(os.path.join(OUT, 'reference.json'), 'w'), indent=1)
    print(f'grpo-parity: loss {loss.item():.6f}, {int(mask.sum().item())} completion tokens')


if __name__ == '__main__':
    main()
