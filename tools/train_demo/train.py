#!/usr/bin/python3
"""Train od-moe's demo model: a small Mixtral-style MoE language model on the King James Bible.

One command, from the repository root (about 50 minutes on 2 CPU cores):

    /usr/bin/python3 tools/train_demo/train.py --out build/demo

Stages, each skipped when its output exists (delete the folder to start over):
  1. corpus     `bible` (Debian bible-kjv + bible-kjv-text 4.38) prints every verse; verses are
                joined into one line per chapter (verse numbers and headings dropped); every
                HOLDOUT_EVERY-th chapter is held out for perplexity. The raw print's SHA-256 is
                checked against CORPUS_SHA256.
  2. tokenizer  SentencePiece BPE (byte fallback, no normalisation) on the training verses.
  3. train      PyTorch on the CPU: the `llama` MoE graph as llama.cpp computes it (RMSNorm,
                RoPE on adjacent pairs, softmax router with the top-k weights renormalised,
                SwiGLU experts, tied embeddings), plus the Switch-Transformer load-balancing
                loss so every expert is used.
  4. gguf       an F32 GGUF in llama.cpp's `llama` layout with the SentencePiece vocabulary in
                the form llama.cpp's "llama" tokenizer reads (gguf-py from llama.cpp's source).

Quantising to Q8_0 and measuring perplexity with llama.cpp and od-moe: tools/train_demo/finish.ts.
"""

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# `bible -l100000 Gen1:1-Rev22:21` of Debian bookworm's bible-kjv 4.38 / bible-kjv-text 4.38.
CORPUS_CMD = ["bible", "-l100000", "Gen1:1-Rev22:21"]
CORPUS_SHA256 = "6f74f5589333c56c263963e6347dba662bae2d96861302e690aaae0b4a855eda"
HOLDOUT_EVERY = 40  # chapters 39, 79, 119, ... (0-based, in canonical order) are held out

CONFIG = dict(
    vocab=2048,
    n_embd=192,
    n_layer=4,
    n_head=4,
    n_head_kv=2,
    n_expert=8,
    n_expert_used=2,
    n_ff=384,
    ctx=256,
    rope_base=10000.0,
    rms_eps=1e-5,
)

TRAIN = dict(
    seed=20,
    threads=int(os.environ.get("TRAIN_THREADS", "1")),
    batch=8,
    steps=540,
    lr=3e-3,
    min_lr_frac=0.1,
    warmup=30,
    weight_decay=0.1,
    aux_coef=0.02,
    eval_every=60,
    eval_batches=4,
)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- 1. corpus


def extract_corpus(out):
    """Writes train.txt / heldout.txt (one chapter per line) and train_verses.txt."""
    paths = {k: os.path.join(out, f"{k}.txt") for k in ("train", "heldout", "train_verses")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    raw = subprocess.run(CORPUS_CMD, capture_output=True, check=True).stdout
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CORPUS_SHA256:
        sys.exit(
            f"corpus: `{' '.join(CORPUS_CMD)}` printed text with SHA-256 {digest}, expected "
            f"{CORPUS_SHA256}; install bible-kjv and bible-kjv-text 4.38 (Debian bookworm)"
        )
    chapters = []  # list of verse lists
    for line in raw.decode("ascii").splitlines():
        if not line.strip():
            continue
        if line.startswith("  "):  # "  12 And God said, ..."
            num, _, verse = line.strip().partition(" ")
            assert num.isdigit(), line
            chapters[-1].append(verse.strip())
        else:  # "Genesis 1"
            chapters.append([])
    assert len(chapters) == 1189, len(chapters)
    held = lambda i: i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    with open(paths["train"], "w") as f:
        f.writelines(" ".join(c) + "\n" for i, c in enumerate(chapters) if not held(i))
    with open(paths["heldout"], "w") as f:
        f.writelines(" ".join(c) + "\n" for i, c in enumerate(chapters) if held(i))
    with open(paths["train_verses"], "w") as f:
        f.writelines(v + "\n" for i, c in enumerate(chapters) if not held(i) for v in c)
    return paths


# ---------------------------------------------------------------- 2. tokenizer


def train_tokenizer(out, verses_path):
    import sentencepiece as spm

    prefix = os.path.join(out, "spm")
    if not os.path.exists(prefix + ".model"):
        spm.SentencePieceTrainer.train(
            input=verses_path,
            model_prefix=prefix,
            model_type="bpe",
            vocab_size=CONFIG["vocab"],
            byte_fallback=True,
            character_coverage=1.0,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            split_digits=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            num_threads=1,
            shuffle_input_sentence=False,
            minloglevel=2,
        )
    return spm.SentencePieceProcessor(model_file=prefix + ".model")


def encode_stream(sp, path):
    """BOS + chapter + EOS for every chapter line, concatenated."""
    ids = []
    with open(path) as f:
        for line in f:
            ids.append(1)
            ids.extend(sp.encode(line.rstrip("\n")))
            ids.append(2)
    return np.array(ids, dtype=np.int64)


# ---------------------------------------------------------------- 3. model


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(ctx, hd, base):
    # llama.cpp's LLAMA_ROPE_TYPE_NORM: dimensions (2i, 2i+1) rotate by pos * base^(-2i/hd).
    inv = base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(ctx, dtype=torch.float64)[:, None] * inv[None, :]  # [ctx, hd/2]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x, cos, sin):
    # x: [B, T, H, hd]; cos/sin: [T, hd/2]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, h, hkv = c["n_embd"], c["n_head"], c["n_head_kv"]
        self.h, self.hkv, self.hd = h, hkv, d // h
        self.wq = nn.Linear(d, h * self.hd, bias=False)
        self.wk = nn.Linear(d, hkv * self.hd, bias=False)
        self.wv = nn.Linear(d, hkv * self.hd, bias=False)
        self.wo = nn.Linear(h * self.hd, d, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = apply_rope(self.wq(x).view(B, T, self.h, self.hd), cos, sin)
        k = apply_rope(self.wk(x).view(B, T, self.hkv, self.hd), cos, sin)
        v = self.wv(x).view(B, T, self.hkv, self.hd)
        rep = self.h // self.hkv
        q = q.transpose(1, 2)  # [B, H, T, hd]
        k = k.transpose(1, 2).repeat_interleave(rep, dim=1)
        v = v.transpose(1, 2).repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd) + mask
        y = att.softmax(-1) @ v  # [B, H, T, hd]
        return self.wo(y.transpose(1, 2).reshape(B, T, self.h * self.hd))


class MoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, ff, e = c["n_embd"], c["n_ff"], c["n_expert"]
        self.e, self.k = e, c["n_expert_used"]
        self.router = nn.Linear(d, e, bias=False)
        self.w_gate = nn.Parameter(torch.empty(e, ff, d))
        self.w_up = nn.Parameter(torch.empty(e, ff, d))
        self.w_down = nn.Parameter(torch.empty(e, d, ff))

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, d]
        probs = self.router(x).softmax(-1)  # [N, E]
        top_p, top_i = probs.topk(self.k, dim=-1)  # [N, k]
        top_w = top_p / top_p.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        counts = torch.zeros(self.e)
        for e in range(self.e):
            tok, slot = (top_i == e).nonzero(as_tuple=True)
            counts[e] = tok.numel()
            if tok.numel() == 0:
                continue
            h = x[tok]
            y = (F.silu(h @ self.w_gate[e].t()) * (h @ self.w_up[e].t())) @ self.w_down[e].t()
            out.index_add_(0, tok, y * top_w[tok, slot, None])
        # Switch Transformer: E * sum_e (fraction of routed slots) * (mean router probability).
        frac = counts / counts.sum()
        aux = self.e * (frac * probs.mean(0)).sum()
        return out.view(shape), aux, counts


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.attn_norm = RMSNorm(c["n_embd"], c["rms_eps"])
        self.attn = Attention(c)
        self.ffn_norm = RMSNorm(c["n_embd"], c["rms_eps"])
        self.moe = MoE(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask)
        y, aux, counts = self.moe(self.ffn_norm(x))
        return x + y, aux, counts


class Model(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embd = nn.Embedding(c["vocab"], c["n_embd"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["n_layer"]))
        self.norm = RMSNorm(c["n_embd"], c["rms_eps"])
        cos, sin = rope_tables(c["ctx"], c["n_embd"] // c["n_head"], c["rope_base"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        std = 0.02
        resid = std / math.sqrt(2 * c["n_layer"])
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                continue
            last = "wo" in name or "w_down" in name
            nn.init.normal_(p, 0.0, resid if last else std)

    def forward(self, idx):
        B, T = idx.shape
        mask = torch.full((T, T), float("-inf")).triu(1)
        x = self.embd(idx)
        aux_total, counts = 0.0, []
        for b in self.blocks:
            x, aux, cnt = b(x, self.cos[:T], self.sin[:T], mask)
            aux_total = aux_total + aux
            counts.append(cnt)
        logits = self.norm(x) @ self.embd.weight.t()  # tied output head
        return logits, aux_total / len(self.blocks), torch.stack(counts)


# ---------------------------------------------------------------- training


def batches(stream, rng, batch, ctx):
    starts = rng.integers(0, len(stream) - ctx - 1, size=batch)
    xy = np.stack([stream[s : s + ctx + 1] for s in starts])
    t = torch.from_numpy(xy)
    return t[:, :-1], t[:, 1:]


@torch.no_grad()
def chunk_ppl(model, stream, ctx, limit=None):
    """exp(mean NLL) over non-overlapping ctx-token chunks, every position after the first scored."""
    model.eval()
    n = (len(stream) - 1) // ctx
    if limit:
        n = min(n, limit)
    nll, count = 0.0, 0
    for i in range(n):
        x = torch.from_numpy(stream[i * ctx : (i + 1) * ctx][None])
        logits, _, _ = model(x)
        lp = logits[0, :-1].log_softmax(-1)
        tgt = x[0, 1:]
        nll -= lp.gather(1, tgt[:, None]).sum().item()
        count += tgt.numel()
    model.train()
    return math.exp(nll / count), count


def train(out, train_ids, held_ids, steps_override=None, probe=False):
    ckpt = os.path.join(out, "model.pt")
    if os.path.exists(ckpt) and not probe:
        return torch.load(ckpt)
    t = dict(TRAIN)
    if steps_override:
        t["steps"] = steps_override
    torch.manual_seed(t["seed"])
    torch.set_num_threads(t["threads"])
    rng = np.random.default_rng(t["seed"])
    model = Model(CONFIG)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params/1e6:.2f}M parameters; train {len(train_ids)} tokens, held-out {len(held_ids)}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t["lr"],
        betas=(0.9, 0.95),
    )
    eval_rng = np.random.default_rng(t["seed"] + 1)
    eval_set = [batches(held_ids, eval_rng, t["batch"], CONFIG["ctx"]) for _ in range(t["eval_batches"])]
    curve = []
    t0 = time.time()
    for step in range(1, t["steps"] + 1):
        if step <= t["warmup"]:
            lr = t["lr"] * step / t["warmup"]
        else:
            p = (step - t["warmup"]) / max(1, t["steps"] - t["warmup"])
            lr = t["lr"] * (t["min_lr_frac"] + (1 - t["min_lr_frac"]) * 0.5 * (1 + math.cos(math.pi * p)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batches(train_ids, rng, t["batch"], CONFIG["ctx"])
        logits, aux, counts = model(x)
        ce = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.reshape(-1))
        loss = ce + t["aux_coef"] * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if probe and step % 5 == 0:
            log(f"probe step {step}: {(time.time()-t0)/step:.2f} s/step, loss {ce.item():.3f}")
        if step % t["eval_every"] == 0 or step == t["steps"]:
            model.eval()
            with torch.no_grad():
                held = sum(
                    F.cross_entropy(model(ex)[0].view(-1, CONFIG["vocab"]), ey.reshape(-1)).item()
                    for ex, ey in eval_set
                ) / len(eval_set)
            model.train()
            share = (counts / counts.sum(1, keepdim=True)).numpy()
            curve.append(dict(step=step, train_loss=round(ce.item(), 4), heldout_loss=round(held, 4),
                              aux=round(aux.item(), 4), seconds=round(time.time() - t0, 1),
                              min_expert_share=round(float(share.min()), 4),
                              max_expert_share=round(float(share.max()), 4)))
            log(json.dumps(curve[-1]))
            with open(os.path.join(out, "curve.json"), "w") as f:
                json.dump(curve, f, indent=1)
    if probe:
        return None
    seconds = time.time() - t0
    state = dict(model=model.state_dict(), curve=curve, seconds=seconds, n_params=n_params,
                 config=CONFIG, train=t)
    torch.save(state, ckpt)
    return state


# ---------------------------------------------------------------- 4. gguf


def write_gguf(out, sp, state, heldout):
    sys.path.insert(0, os.path.join(ROOT, ".cache", "llama.cpp-src", "gguf-py"))
    import gguf

    c = CONFIG
    path = os.path.join(out, "kjv-moe-F32.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("od-moe KJV demo MoE")
    w.add_description("A small Mixtral-style MoE trained on the King James Bible for od-moe's demo")
    w.add_license("MIT (weights); corpus: King James Version, public domain")
    w.add_context_length(c["ctx"])
    w.add_embedding_length(c["n_embd"])
    w.add_block_count(c["n_layer"])
    w.add_feed_forward_length(c["n_ff"])
    w.add_head_count(c["n_head"])
    w.add_head_count_kv(c["n_head_kv"])
    w.add_rope_dimension_count(c["n_embd"] // c["n_head"])
    w.add_rope_freq_base(c["rope_base"])
    w.add_layer_norm_rms_eps(c["rms_eps"])
    w.add_expert_count(c["n_expert"])
    w.add_expert_used_count(c["n_expert_used"])
    w.add_vocab_size(c["vocab"])
    w.add_file_type(0)  # ALL_F32

    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)
    # A text-continuation model: a chat is the messages' text, joined by spaces.
    w.add_chat_template(
        "{% for message in messages %}{{ message['content'] }}{% if not loop.last %} {% endif %}{% endfor %}"
    )

    sd = {k: v.float().numpy() for k, v in state["model"].items()}
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    w.add_tensor("token_embd.weight", f32(sd["embd.weight"]))  # numpy [vocab, d] = ggml {d, vocab}
    w.add_tensor("output_norm.weight", f32(sd["norm.weight"]))
    for i in range(c["n_layer"]):
        p = f"blocks.{i}."
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", f32(sd[p + "attn_norm.weight"]))
        w.add_tensor(b + "attn_q.weight", f32(sd[p + "attn.wq.weight"]))
        w.add_tensor(b + "attn_k.weight", f32(sd[p + "attn.wk.weight"]))
        w.add_tensor(b + "attn_v.weight", f32(sd[p + "attn.wv.weight"]))
        w.add_tensor(b + "attn_output.weight", f32(sd[p + "attn.wo.weight"]))
        w.add_tensor(b + "ffn_norm.weight", f32(sd[p + "ffn_norm.weight"]))
        w.add_tensor(b + "ffn_gate_inp.weight", f32(sd[p + "moe.router.weight"]))
        w.add_tensor(b + "ffn_gate_exps.weight", f32(sd[p + "moe.w_gate"]))  # ggml {d, ff, E}
        w.add_tensor(b + "ffn_up_exps.weight", f32(sd[p + "moe.w_up"]))
        w.add_tensor(b + "ffn_down_exps.weight", f32(sd[p + "moe.w_down"]))  # ggml {ff, d, E}
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "demo"))
    ap.add_argument("--probe", type=int, default=0, help="time this many steps and stop")
    ap.add_argument("--steps", type=int, default=0, help="override the step count")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    paths = extract_corpus(a.out)
    sp = train_tokenizer(a.out, paths["train_verses"])
    log(f"corpus + tokenizer: {time.time()-t0:.1f} s")
    train_ids = encode_stream(sp, paths["train"])
    held_ids = encode_stream(sp, paths["heldout"])
    np.save(os.path.join(a.out, "heldout_ids.npy"), held_ids)
    if a.probe:
        train(a.out, train_ids, held_ids, steps_override=a.probe, probe=True)
        return
    state = train(a.out, train_ids, held_ids, steps_override=a.steps or None)
    model = Model(CONFIG)
    model.load_state_dict(state["model"])
    torch.set_num_threads(TRAIN["threads"])
    ppl, n = chunk_ppl(model, held_ids, CONFIG["ctx"])
    ppl128, n128 = chunk_ppl(model, held_ids, 128, limit=8)
    summary = dict(
        n_params=state["n_params"], train_seconds=round(state["seconds"], 1),
        train_tokens=int(len(train_ids)), heldout_tokens=int(len(held_ids)),
        heldout_ppl_full=round(ppl, 3), heldout_scored=n,
        heldout_ppl_first8x128=round(ppl128, 3), config=CONFIG, train=state["train"],
        corpus_sha256=CORPUS_SHA256, curve=state["curve"],
    )
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log(f"held-out perplexity (PyTorch, F32, {n} tokens in chunks of {CONFIG['ctx']}): {ppl:.3f}")
    path = write_gguf(a.out, sp, state, held_ids)
    log(f"wrote {path} in {time.time()-t0:.0f} s total")


if __name__ == "__main__":
    main()
