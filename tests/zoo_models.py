"""Tiny real-architecture models built from ``torch.nn`` (and transformers when installed), each
with its data and an independent per-example ``log p̃`` for the autograd-loop oracle.

Every builder returns a :class:`Case`. Models are built in train mode, as users leave them, so the
tests can check that nfk_nb changes neither their parameters, buffers nor modes. Widths are tiny
and N = 16-24 so the whole matrix runs in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import nfk_nb as nfk
from nfk_nb.zoo.resnet import BasicBlock


@dataclass
class Case:
    name: str
    model: nn.Module
    make_lik: Callable[[nn.Module], nfk.Likelihood]
    data: Any
    examples: list  # one entry per example, what logp_one takes
    logp_one: Callable[[nn.Module, Any], torch.Tensor]  # scalar log p̃ of one example, eager
    centered: bool = True
    reference: list | None = None  # examples of the reference set (sampler draws), else the data
    fallback: bool = False  # needs the per-example fallback (cannot vmap over examples)
    extra: dict = field(default_factory=dict)


def joint(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(model(x[None]), -1)[0]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, c: int = 3, s: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, c, s, s, generator=_gen(seed))


def _warm_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Running statistics from two train batches (as after a little training), left in train mode."""
    model.train()
    with torch.no_grad():
        model(x[: len(x) // 2])
        model(x[len(x) // 2 :])
    return model


# -- CNNs ---------------------------------------------------------------------------------------
class TinyResNet(nn.Module):
    def __init__(self, width: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int = 2) -> None:
        super().__init__()
        h = c * expand
        self.block = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.Hardswish(),
            nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.Hardswish(),
            SqueezeExcite(h), nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c),
        )

    def forward(self, x):
        return x + self.block(x)


class TinyMobileNet(nn.Module):
    def __init__(self, c: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.Hardswish())
        self.block = InvertedResidual(c)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c, 8), nn.Hardswish(), nn.Dropout(0.2),
                                  nn.Linear(8, classes))

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.block(self.stem(x)), 1))


class TinyViT(nn.Module):
    def __init__(self, d: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 5, d))
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.1, batch_first=True, norm_first=True), 1,
            enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos
        return self.head(self.norm(self.encoder(t))[:, 0])


class TextClassifier(nn.Module):
    """TransformerEncoder on int64 token ids; id 0 is padding (key padding mask)."""

    def __init__(self, vocab: int = 20, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.1, batch_first=True), 1,
            enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, ids):
        pad = ids == 0
        h = self.encoder(self.emb(ids), src_key_padding_mask=pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1))


class RecurrentClassifier(nn.Module):
    def __init__(self, kind: str, d: int = 3, h: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.kind = kind
        if kind == "GRUCell":
            self.rnn = nn.GRUCell(d, h)
        else:
            self.rnn = getattr(nn, kind)(d, h, batch_first=True)
        self.head = nn.Linear(h, classes)

    def forward(self, x):
        if self.kind == "GRUCell":
            state = x.new_zeros(len(x), self.rnn.hidden_size)
            for t in range(x.shape[1]):
                state = self.rnn(x[:, t], state)
            return self.head(state)
        return self.head(self.rnn(x)[0][:, -1])


def dcgan_discriminator(api: str) -> nn.Module:
    sn = nn.utils.spectral_norm if api == "hooks" else nn.utils.parametrizations.spectral_norm
    return nn.Sequential(
        sn(nn.Conv2d(1, 4, 4, 2, 1)), nn.LeakyReLU(0.2),
        sn(nn.Conv2d(4, 8, 4, 2, 1)), nn.LeakyReLU(0.2),
        nn.Flatten(), sn(nn.Linear(8 * 2 * 2, 1)),
    )


def dcgan_generator(z: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Linear(z, 8 * 2 * 2), nn.Unflatten(1, (8, 2, 2)), nn.BatchNorm2d(8), nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 4, 2, 1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.ConvTranspose2d(4, 1, 4, 2, 1), nn.Tanh(),
    )


# -- the cases ----------------------------------------------------------------------------------
def _classifier_case(name: str, model: nn.Module, X: torch.Tensor, **kw: Any) -> Case:
    return Case(name, model, lambda m: nfk.Classifier(m), X, list(X), joint, **kw)


def resnet(n: int = 16) -> Case:
    torch.manual_seed(0)
    X = _images(n)
    return _classifier_case("resnet_basicblock_bn", _warm_batchnorm(TinyResNet(), X), X)


def mobilenet(n: int = 16) -> Case:
    torch.manual_seed(0)
    X = _images(n)
    return _classifier_case("mobilenet_se_hardswish_dropout", _warm_batchnorm(TinyMobileNet(), X), X)


def vit(n: int = 16) -> Case:
    torch.manual_seed(0)
    return _classifier_case("vit_mha", TinyViT().train(), _images(n))


def text_transformer(n: int = 16) -> Case:
    torch.manual_seed(0)
    ids = torch.randint(1, 20, (n, 6), generator=_gen(2))
    for i in range(0, n, 3):
        ids[i, 4 - i % 3:] = 0  # padding
    return _classifier_case("transformer_text_padding_mask", TextClassifier().train(), ids)


def recurrent(kind: str, n: int = 16) -> Case:
    torch.manual_seed(0)
    X = torch.randn(n, 5, 3, generator=_gen(3))
    # PyTorch's GRU / RNN (and LSTM outside its float32 mkldnn kernel) cannot be vmapped over
    # examples; a GRUCell unrolled in Python with an explicit initial state can
    return _classifier_case(kind.lower(), RecurrentClassifier(kind).train(), X,
                            fallback=kind in ("GRU", "RNN", "LSTM"))


def dcgan(api: str, n: int = 16) -> Case:
    torch.manual_seed(0)
    disc, gen = dcgan_discriminator(api).train(), dcgan_generator().train()
    X = torch.tanh(torch.randn(n, 1, 8, 8, generator=_gen(4)))

    def sampler(k: int) -> torch.Tensor:
        return gen(torch.randn(k, 4))

    lik_of = lambda m: nfk.EnergyModel(m, sampler=sampler, n_samples=24)  # noqa: E731
    draws = list(lik_of(disc).draw_reference(0))
    return Case(f"dcgan_spectral_norm_{api}", disc, lik_of, X, list(X), lambda m, x: m(x[None])[0, 0],
                reference=draws, extra={"generator": gen})


def weight_norm(n: int = 16) -> Case:
    torch.manual_seed(0)
    wn = nn.utils.parametrizations.weight_norm
    net = nn.Sequential(wn(nn.Linear(6, 10)), nn.Tanh(), wn(nn.Linear(10, 4)))
    return _classifier_case("weight_norm", net, torch.randn(n, 6, generator=_gen(5)))


def frozen(n: int = 16) -> Case:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 4))
    for p in net[0].parameters():
        p.requires_grad_(False)
    return _classifier_case("frozen_first_layer", net, torch.randn(n, 6, generator=_gen(6)))


def bert(n: int = 12) -> Case:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg)
    g = _gen(7)
    ids = torch.randint(1, 30, (n, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, 4:] = 0
    data = {"input_ids": ids * mask, "attention_mask": mask, "labels": torch.randint(0, 3, (n,), generator=g)}
    rows = [{k: v[i] for k, v in data.items()} for i in range(n)]

    def logp(m, ex):
        logits = m(input_ids=ex["input_ids"][None], attention_mask=ex["attention_mask"][None]).logits[0]
        return torch.log_softmax(logits, -1)[ex["labels"]]

    return Case("bert_dict_2d_mask", model, lambda m: nfk.Classifier(m, score="label"), data, rows, logp,
                centered=False, fallback=True)


def gpt2(n: int = 12) -> Case:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=24, n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    ids = torch.randint(0, 24, (n, 6), generator=_gen(8))

    def logp(m, x):
        lp = torch.log_softmax(m(x[None]).logits[0, :-1], -1)
        return lp.gather(-1, x[1:, None]).sum()

    # plain id tensors (no mask) vmap; dict batches with a 2-D mask fall back (test_huggingface.py)
    return Case("gpt2_causal_lm", model, nfk.CausalLM, ids, list(ids), logp, centered=False)


CPU_CASES: dict[str, Callable[[], Case]] = {
    "resnet": resnet,
    "mobilenet": mobilenet,
    "vit": vit,
    "text_transformer": text_transformer,
    "gru": lambda: recurrent("GRU"),
    "lstm": lambda: recurrent("LSTM"),
    "rnn": lambda: recurrent("RNN"),
    "grucell": lambda: recurrent("GRUCell"),
    "dcgan_sn_hooks": lambda: dcgan("hooks"),
    "dcgan_sn_parametrize": lambda: dcgan("parametrize"),
    "weight_norm": weight_norm,
    "frozen": frozen,
}
HF_CASES: dict[str, Callable[[], Case]] = {"bert": bert, "gpt2": gpt2}
