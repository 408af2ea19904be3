"""DPO end to end in PyTorch, float64 (tests/train/dpo-parity.test.ts).

On the parity fixture's Llama (tests/fixtures/parity/llama_gqa, the model of torch_reference.py) with
LoRA on every linear layer (random A and B, s = alpha / r = 2): two preference pairs, chosen and
rejected sharing a 4-token prompt that carries no loss; the policy is the adapted model, the
reference the base (adapters off). TRL's sigmoid DPO loss with beta 0.1 and label_smoothing 0.1,
its metrics, and the gradients of every A and B. Writes tests/fixtures/dpo-parity/.

Run: /usr/bin/python3 scripts/dpo_reference.py
"""
import json
import os
import struct

import numpy as np
import torch

import torch_reference as tr

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, '..', 'tests', 'fixtures', 'parity', 'llama_gqa')
OUT = os.path.join(HERE, '..', 'tests', 'fixtures', 'dpo-parity')
SEQ, PROMPT, BETA, EPS = 12, 4, 0.1, 0.1


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
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.float32).reshape(h['shape']).copy()).to(torch.float64)
    return out


def main():
    c = tr.CONFIGS['llama_gqa']
    tr.B, tr.T = 4, SEQ
    w = read_safetensors(os.path.join(MODEL, 'model.safetensors'))
    gen = torch.Generator().manual_seed(2024)
    f32 = lambda t: t.to(torch.float32).to(torch.float64)
    adapters = {}
    for i in range(c['num_hidden_layers']):
        for short in tr.LINEAR:
            name = f'model.layers.{i}.{"mlp" if short in ("gate_proj", "up_proj", "down_proj") else "self_attn"}.{short}'
            W = w[f'{name}.weight']
            adapters[name] = dict(A=f32(torch.randn(8, W.shape[1], generator=gen) * 0.1).requires_grad_(),
                                  B=f32(torch.randn(W.shape[0], 8, generator=gen) * 0.1).requires_grad_(), s=2.0)
    # sequences: chosen 0, chosen 1, rejected 0, rejected 1 (TRL's concatenated batch)
    prompts = torch.randint(0, c['vocab_size'], (2, PROMPT), generator=gen)
    seqs = []
    for k in range(4):
        completion = torch.randint(0, c['vocab_size'], (SEQ + 1 - PROMPT,), generator=gen)
        seqs.append(torch.cat((prompts[k % 2], completion)))
    tokens = torch.stack(seqs)  # [4, SEQ + 1]
    ids, labels = tokens[:, :SEQ], tokens[:, 1:].clone()
    labels[:, :PROMPT - 1] = -100  # the prompt carries no loss
    lens = [SEQ - PROMPT - 1, SEQ - PROMPT - 3, SEQ - PROMPT, SEQ - PROMPT - 2]  # completions of other lengths
    for k, n in enumerate(lens):
        labels[k, PROMPT - 1 + n:] = -100

    def seq_logps(logits):
        lp = torch.log_softmax(logits, dim=-1)
        mask = labels != -100
        picked = lp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * mask).sum(-1)

    policy = seq_logps(tr.forward(c, w, adapters, ids))
    with torch.no_grad():
        ref = seq_logps(tr.forward(c, w, {}, ids))
    pc, pr, rc, rr = policy[:2], policy[2:], ref[:2], ref[2:]
    logits = (pc - pr) - (rc - rr)
    losses = -torch.nn.functional.logsigmoid(BETA * logits) * (1 - EPS) - torch.nn.functional.logsigmoid(-BETA * logits) * EPS
    loss = losses.mean()
    loss.backward()
    chosen_rewards, rejected_rewards = BETA * (pc - rc).detach(), BETA * (pr - rr).detach()
    metrics = {
        'rewards/chosen': chosen_rewards.mean().item(),
        'rewards/rejected': rejected_rewards.mean().item(),
        'rewards/accuracies': (chosen_rewards > rejected_rewards).double().mean().item(),
        'rewards/margins': (chosen_rewards - rejected_rewards).mean().item(),
        'logps/chosen': pc.detach().mean().item(),
        'logps/rejected': pr.detach().mean().item(),
    }
    values, grads = {}, {}
    for name, ad in adapters.items():
        for part, key in (('A', 'lora_A'), ('B', 'lora_B')):
            values[f'{name}.{key}'] = ad[part]
            grads[f'{name}.{key}'] = ad[part].grad
    os.makedirs(OUT, exist_ok=True)
    tr.write_safetensors(os.path.join(OUT, 'adapter.safetensors'), values)
    tr.write_safetensors(os.path.join(OUT, 'grads.safetensors'), grads)
    json.dump(dict(model='llama_gqa', seq=SEQ, ids=ids.tolist(), labels=labels.tolist(), beta=BETA,
                   label_smoothing=EPS, loss=loss.item(), metrics=metrics, torch=torch.__version__),
              open(os.path.join(OUT, 'reference.json'), 'w'), indent=1)
    print(f'dpo-parity: loss {loss.item():.6f}, {metrics}')


if __name__ == '__main__':
    main()
