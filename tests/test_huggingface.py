"""Hugging Face conventions without a wrapper: dict / BatchEncoding batches, Datasets and DataLoaders of
dicts, ``.logits`` outputs, 2-D attention masks (per-example fallback, one warning), ``CausalLM``.

Tiny random-init configs only (no downloads); float64 against the autograd-loop oracle."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import nfk_nb as nfk
from nfk_nb._fallback import VmapFallbackWarning

from .oracle import fisher_vectors as oracle_vectors
from .oracle import per_example_grads

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("float64_default")
DAMP = nfk.DEFAULT_DAMPING


def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(cfg).double().eval()


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=24, n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).double().eval()


def encoding(n=10, t=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    for i in range(0, n, 2):  # right padding of various lengths: a real 2-D mask
        mask[i, t - 1 - i % 4:] = 0
    ids = ids * mask
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (n,), generator=g)}


def rows(batch: dict) -> list[dict]:
    n = len(batch["input_ids"])
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


class DictDataset(Dataset):
    def __init__(self, batch: dict) -> None:
        self.items = rows(batch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def bert_oracle(model, data: dict, score: str) -> torch.Tensor:
    """Exact Fisher vectors from one autograd call per example (the model called on its own)."""

    def logp(ex):
        inputs = {k: v[None] for k, v in ex.items() if k != "labels"}
        logits = model(**inputs).logits[0]
        if score == "joint":
            return torch.logsumexp(logits, -1)
        return torch.log_softmax(logits, -1)[ex["labels"]]

    names = [n for n, _ in model.named_parameters()]
    G = per_example_grads(model, names, logp, rows(data))
    return oracle_vectors(G, G, score == "joint", "diagonal", DAMP)


@pytest.mark.parametrize("score", ["joint", "label"])
def test_bert_on_dict_batches_matches_oracle_with_one_fallback_warning(score):
    model, data = tiny_bert(), encoding()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        V = nfk.fisher_vectors(nfk.Classifier(model, score=score), data, batch_size=4)
    fallback = [w for w in caught if issubclass(w.category, VmapFallbackWarning)]
    assert len(fallback) == 1, [str(w.message) for w in caught]
    text = str(fallback[0].message)
    assert "'bert' (BertModel)" in text and "one example at a time" in text
    torch.testing.assert_close(V, bert_oracle(model, data, score), rtol=1e-6, atol=1e-9)


def test_dict_dataset_dataloader_and_batchencoding_give_the_same_kernel():
    model, data = tiny_bert(), encoding(n=8)
    lik = nfk.Classifier(model, score="label")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VmapFallbackWarning)
        K = nfk.fisher_kernel(lik, data, batch_size=3)
        forms = [transformers.BatchEncoding(data), DictDataset(data),
                 DataLoader(DictDataset(data), batch_size=5, shuffle=False),
                 ({k: v for k, v in data.items() if k != "labels"}, data["labels"])]
        for form in forms:
            torch.testing.assert_close(nfk.fisher_kernel(lik, form, batch_size=3), K, rtol=1e-9, atol=1e-12)
        est = nfk.LowRankNFK(lik, rank=3, progress=False, batch_size=3)
        E = est.fit_transform(data)
        torch.testing.assert_close(est.transform(DictDataset(data)), E, rtol=1e-6, atol=1e-9)


def test_label_score_without_labels_key_is_refused():
    model, data = tiny_bert(), encoding(n=4)
    del data["labels"]
    with pytest.raises(nfk.NFKError, match="needs labels"):
        nfk.fisher_kernel(nfk.Classifier(model, score="label"), data)


def gpt_oracle(model, ids, mask):
    def logp(ex):
        i, m = ex
        logits = model(i[None]).logits[0]
        lp = torch.log_softmax(logits[:-1], -1).gather(-1, i[1:, None])[:, 0]
        return (lp * m[1:]).sum()

    unique = [n for n, _ in model.named_parameters()]
    G = per_example_grads(model, unique, logp, list(zip(ids, mask.double())))
    return oracle_vectors(G, G, False, "diagonal", DAMP)


def test_gpt2_causal_lm_matches_oracle_with_padding_and_tied_embeddings():
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 24, (8, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 5:] = 0  # right padding
    lik = nfk.CausalLM(model)
    unique = sum(p.numel() for p in model.parameters())  # tied weights counted once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VmapFallbackWarning)
        V = nfk.fisher_vectors(lik, {"input_ids": ids, "attention_mask": mask}, batch_size=3)
        assert V.shape == (8, unique)
        torch.testing.assert_close(V, gpt_oracle(model, ids, mask), rtol=1e-6, atol=1e-9)
        # the padded positions' token ids do not matter; labels = -100 is the same as padding
        other = ids.clone()
        other[mask == 0] = 3
        V2 = nfk.fisher_vectors(lik, {"input_ids": other, "attention_mask": mask}, batch_size=3)
        torch.testing.assert_close(V2, V, rtol=1e-9, atol=1e-12)
        labels = ids.masked_fill(mask == 0, -100)
        V3 = nfk.fisher_vectors(lik, {"input_ids": ids, "labels": labels}, batch_size=4)
        torch.testing.assert_close(V3, V, rtol=1e-9, atol=1e-12)
        # plain tensors: ids alone (every position counts) and (ids, mask)
        V4 = nfk.fisher_vectors(lik, (ids, mask), batch_size=4)
        torch.testing.assert_close(V4, V, rtol=1e-9, atol=1e-12)


def test_causal_lm_low_rank_matches_exact():
    model = tiny_gpt2()
    ids = torch.randint(1, 24, (12, 6), generator=torch.Generator().manual_seed(3))
    lik = nfk.CausalLM(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VmapFallbackWarning)
        K = nfk.fisher_kernel(lik, ids)
        est = nfk.LowRankNFK(lik, rank=4, progress=False, batch_size=5)
        E = est.fit_transform(ids)
    ev = torch.linalg.eigvalsh(K)
    best = ev[:-4].pow(2).sum().sqrt()
    assert float(torch.linalg.norm(K - E @ E.T) / best) <= 1.05
    assert est.lik.describe()["family"] == "causal-lm"


def test_causal_lm_refuses_logits_of_the_wrong_shape():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(20, 10))
    with pytest.raises(nfk.NFKError, match="next-token logits of shape"):
        nfk.fisher_kernel(nfk.CausalLM(model), torch.randint(0, 10, (4, 5)))
