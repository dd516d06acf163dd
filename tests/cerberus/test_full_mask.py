"""The light client takes an attention mask in the full partition (issue #13 item 3, SPEC C6).

``LightClient.logits(ids, attention_mask)`` sends the mask as the last column of the one
encrypted input of a key-masked program (``LoweringOptions.key_mask``); the miner here is
the simulator (``simulated_miner``), bit-exact with the circuit. Real positions of a
padded batch are then bit-for-bit independent of what the padding holds (same integers
from the miner, same client code after them), and a program lowered without the mask
still refuses padding with a clear error instead of computing something else.
"""

import numpy as np
import pytest
import torch

from cerberus.errors import CerberusError
from cerberus.ir import IntGraph, evaluate
from cerberus.light_client import LightClient, client_state, simulated_miner
from cerberus.lower import LoweringOptions, lower_blocks

from .conftest import embedded
from .test_lower_mask import T, build_peaky_bert, ids_of, left_padded, right_padded


def light(model, graph: IntGraph) -> LightClient:
    """The full partition's client of ``model`` with ``graph`` simulated as its miner, its
    I/O as compile.py hands it over (the manifest's quantization block)."""
    io = {k: graph.meta[k] for k in ("input_scale", "input_bits", "output_scale", "key_mask")}
    return LightClient(model.cfg, client_state(model, "full"), partition="full",
                       miner=simulated_miner({"blocks": graph}), io=io, seq_len=T)


@pytest.fixture(scope="module")
def bert():
    model = build_peaky_bert()
    graph = lower_blocks(model, embedded(model, ids_of(24, 1)), LoweringOptions(key_mask=True))
    return model, light(model, graph), graph


@pytest.fixture(scope="module")
def gpt(tiny_gpt):
    model, _ = tiny_gpt
    graph = lower_blocks(model, embedded(model, ids_of(24, 1)), LoweringOptions(key_mask=True))
    return model, light(model, graph), graph


@pytest.mark.parametrize("which", ["bert", "gpt"])
def test_padded_batch_real_positions_ignore_the_padding(which, bert, gpt) -> None:
    """Encoder right-padded, causal LM left-padded (as each is batched): the logits or
    hidden states of real positions are the same bits whatever the padding holds."""
    _, client, graph = bert if which == "bert" else gpt
    mask = torch.tensor(right_padded(8) if which == "bert" else left_padded(8))
    ids = ids_of(8, 2)
    other = torch.where(mask.bool(), ids, ids_of(8, 3))
    out = client.logits(ids, mask)
    real = mask.bool()
    assert torch.equal(out[real], client.logits(other, mask)[real])
    # what the miner ran: the simulator on the client's one [T, d + 1] input per sequence
    x = client.encode_input(ids, mask)
    assert x.shape == (8, T, graph.meta["d_model"]) and np.array_equal(x[..., -1], mask)
    assert torch.equal(out, client.decode_output(evaluate(graph, x)["output"]))
    # without the mask the padding is attended to and the real positions move
    assert not torch.equal(client.logits(ids)[real], client.logits(other)[real])


def test_sentence_embedding_pools_real_tokens_of_a_padded_batch(bert) -> None:
    _, client, _ = bert
    mask = torch.tensor(right_padded(8))
    ids = ids_of(8, 4)
    other = torch.where(mask.bool(), ids, torch.zeros_like(ids))  # pad token 0, as BERT's
    emb = client.sentence_embedding(ids, mask)
    assert emb.shape == (8, client.cfg.d_model)
    assert torch.equal(emb, client.sentence_embedding(other, mask))


def test_no_mask_means_every_position_is_real(bert) -> None:
    _, client, _ = bert
    ids = ids_of(4, 5)
    assert torch.equal(client.logits(ids), client.logits(ids, torch.ones(4, T, dtype=torch.long)))
    assert (client.encode_input(ids)[..., -1] == 1).all()


def test_a_program_without_the_mask_refuses_padding(tiny_gpt) -> None:
    model, _ = tiny_gpt
    graph = lower_blocks(model, embedded(model, ids_of(24, 1)))
    client = light(model, graph)
    ids = ids_of(2, 6)
    assert client.encode_input(ids).shape == (2, T, model.cfg.d_model)  # as before
    assert torch.equal(client.logits(ids), client.logits(ids, torch.ones(2, T)))
    with pytest.raises(CerberusError, match="takes no attention mask"):
        client.logits(ids, torch.tensor(right_padded(2)))


@pytest.mark.parametrize("mask", [torch.ones(2, T - 1), torch.full((2, T), 2)],
                         ids=["shape", "values"])
def test_bad_masks_are_refused(bert, mask) -> None:
    _, client, _ = bert
    with pytest.raises(CerberusError, match="attention_mask must be 0/1 of shape"):
        client.logits(ids_of(2, 7), mask)
