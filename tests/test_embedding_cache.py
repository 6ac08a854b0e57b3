"""Text encoders against diffusers' HunyuanVideoPipeline.encode_prompt (the independent
reference), the embedding cache round trip, tools/precompute_embeddings.py on 1 rank vs
2 torchrun/gloo ranks, and one-line errors. Tiny random encoders of the real classes."""

import copy
import json
import os
import pickle
import random
import sys

import pytest
import torch

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.data import text_encoders as te
from dancegrpo_hpc.data.embedding_cache import EmbeddingCache, write_embedding_cache
from dancegrpo_hpc.data.text_encoders import HunyuanTextEncoders
from dancegrpo_hpc.testing.text_encoders import WORDS, save_tiny_text_encoders, tiny_text_encoders
from dist_utils import finish_job, start_job
from script_utils import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red cat moving left", "the dog jumping over a small river", "camera pans over the city at night",
           "zebra unicorn",  # words outside the tiny vocabularies
           " ".join(random.Random(0).choices(WORDS, k=300)),  # longer than 256 Llama and 77 CLIP tokens
           "a bird", "blue fish near the house", "rain", "snow on the mountain, wide shot"]


def _tool():
    return load_script("tools/precompute_embeddings.py")


def _diffusers(llama, llama_tok, clip, clip_tok, prompts, **options):
    from diffusers import HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline(text_encoder=llama, tokenizer=llama_tok, transformer=None, vae=None, scheduler=None,
                                text_encoder_2=clip, tokenizer_2=clip_tok)
    with torch.no_grad():
        embeds, pooled, mask = pipe.encode_prompt(prompts, device=torch.device("cpu"), **options)
    return embeds, mask, pooled


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny matrices: a second OpenMP thread only adds spin-waiting on a shared 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def modules():
    return tiny_text_encoders()


@pytest.fixture(scope="module")
def encoder_root(tmp_path_factory):
    return save_tiny_text_encoders(tmp_path_factory.mktemp("encoders"))


def test_template_is_diffusers():
    from diffusers.pipelines.hunyuan_video import pipeline_hunyuan_video as ref

    assert te.DEFAULT_PROMPT_TEMPLATE == ref.DEFAULT_PROMPT_TEMPLATE


@pytest.mark.parametrize("template, max_length", [(None, 256), ({"template": "<|start_header_id|>user"
                                                                             "<|end_header_id|>\n\n{}<|eot_id|>",
                                                                 "crop_start": None}, 16)])
def test_encode_equals_diffusers_encode_prompt(modules, template, max_length):
    ours = HunyuanTextEncoders(*modules, template=template, max_length=max_length).encode(PROMPTS)
    options = {"max_sequence_length": max_length} if template is None else \
        {"prompt_template": template, "max_sequence_length": max_length}
    ref = _diffusers(*modules, PROMPTS, **options)
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype and torch.equal(a, b)
    embeds, mask, pooled = ours
    assert embeds.shape == (len(PROMPTS), max_length, 32) and pooled.shape == (len(PROMPTS), 24)
    if template is None:  # the tiny template prefix is 95 tokens, as Llama-3's: the prompt + <|eot_id|> stay
        assert mask.sum(1).tolist()[:3] == [6, 8, 8] and mask[4].all()
    assert len(set(pooled[:, 0].tolist())) == len(PROMPTS)


@pytest.mark.parametrize("llava, dtype", [(False, "bfloat16"), (True, "float32")])
def test_from_pretrained_folders_equal_diffusers(tmp_path, llava, dtype):
    root = save_tiny_text_encoders(tmp_path, llava=llava)
    enc = HunyuanTextEncoders.from_pretrained(root, dtype=dtype)
    assert type(enc.llama).__name__ == "LlamaModel" and enc.llama.dtype == te.DTYPES[dtype]
    ours = enc.encode(PROMPTS[:4])
    ref = _diffusers(enc.llama, enc.llama_tokenizer, enc.clip, enc.clip_tokenizer, PROMPTS[:4])
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # two explicit folders (model + tokenizer together) load the same encoders
    for sub, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        for name in os.listdir(os.path.join(root, tok)):
            os.rename(os.path.join(root, tok, name), os.path.join(root, sub, name))
    same = HunyuanTextEncoders.from_pretrained(llama=os.path.join(root, "text_encoder"),
                                               clip=os.path.join(root, "text_encoder_2"), dtype=dtype)
    assert all(torch.equal(a, b) for a, b in zip(same.encode(PROMPTS[:4]), ours))
    assert same.describe()["llama"]["config_sha256"] == enc.describe()["llama"]["config_sha256"]


def test_cache_round_trip_shuffled_across_shards(tmp_path, modules):
    enc = HunyuanTextEncoders(*modules)
    write_embedding_cache(str(tmp_path), enc, PROMPTS, shard_size=3, batch_size=4)
    cache = EmbeddingCache.open(str(tmp_path))
    assert cache.prompts == PROMPTS and len(cache) == len(PROMPTS) and "" in cache
    assert len(cache.index["shards"]) == 4 and cache.dtype == torch.float32
    asked = random.Random(1).sample(PROMPTS, len(PROMPTS)) + [PROMPTS[2], PROMPTS[2]]
    got = cache.lookup(asked)
    want = enc.encode(asked)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)
    neg = pickle.loads(pickle.dumps(cache)).negative()  # a worker's copy reopens the shards
    assert all(torch.equal(a, b) for a, b in zip(neg, enc.encode([""])))
    assert neg[1].sum() == 1  # the empty prompt: only the closing <|eot_id|> after the template prefix
    bf16 = tmp_path / "bf16"
    write_embedding_cache(str(bf16), enc, PROMPTS[:4], shard_size=2, dtype=torch.bfloat16)
    e, m, p = EmbeddingCache.open(str(bf16)).lookup(PROMPTS[:4][::-1])
    we, wm, wp = enc.encode(PROMPTS[:4][::-1])
    assert e.dtype == torch.bfloat16 and torch.equal(e, we.bfloat16()) and torch.equal(p, wp.bfloat16())
    assert torch.equal(m, wm)


def _precompute(*args, ranks=1, cwd=ROOT, log_dir=None):
    if ranks == 1:
        return _tool().main(list(args))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           os.path.join(ROOT, "tools", "precompute_embeddings.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    job = start_job(cmd, os.path.join(log_dir, "torchrun.log"), cwd=cwd, env=env)  # own session: a timeout kills every rank
    out = finish_job(job, 600)
    assert job.returncode == 0, out[-3000:]
    return out


@pytest.mark.distributed
def test_precompute_two_torchrun_ranks_equal_one_rank(tmp_path, encoder_root, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS + ["", PROMPTS[0]]) + "\n")  # empty lines and duplicates are dropped
    common = ["--prompts", str(prompts), "--text-encoders", encoder_root, "--shard-size", "2", "--batch-size", "3"]
    assert _precompute(*common, "--out", str(tmp_path / "one")) == 0
    out = capsys.readouterr().out
    assert f"{len(PROMPTS)} prompts" in out and "1 prompt(s) longer than 256 Llama tokens, 1 longer than 77" in out
    two = _precompute(*common, "--out", str(tmp_path / "two"), ranks=2, log_dir=str(tmp_path))
    assert "2 rank(s)" in two
    one, two = EmbeddingCache.open(str(tmp_path / "one")), EmbeddingCache.open(str(tmp_path / "two"))
    assert sorted(one.prompts) == sorted(two.prompts) == sorted(PROMPTS)
    assert {s["file"][:9] for s in two.index["shards"]} == {"rank00000", "rank00001"}
    for a, b in zip(one.lookup(PROMPTS + [""]), two.lookup(PROMPTS + [""])):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # batches differ between the runs
    drop = ("shards", "prompts")
    assert {k: v for k, v in one.index.items() if k not in drop} == \
        {k: v for k, v in two.index.items() if k not in drop}
    assert not [n for n in os.listdir(tmp_path / "two") if n.endswith((".tmp", ".part.json"))]


def _one_line_error(capsys, *args):
    assert _precompute(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_tool_errors_are_one_line(tmp_path, encoder_root, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    out = str(tmp_path / "out")
    err = _one_line_error(capsys, "--prompts", str(prompts), "--text-encoders", str(tmp_path / "nope"), "--out", out)
    assert "--text-encoders" in err and "nope" in err and "text_encoder/" in err
    broken = tmp_path / "broken"
    os.makedirs(broken / "text_encoder")
    err = _one_line_error(capsys, "--prompts", str(prompts), "--text-encoders", str(broken), "--out", out)
    assert "config.json" in err and "text_encoder" in err
    err = _one_line_error(capsys, "--prompts", str(tmp_path / "none.txt"), "--text-encoders", encoder_root,
                          "--out", out)
    assert "none.txt" in err
    err = _one_line_error(capsys, "--prompts", str(prompts), "--llama", os.path.join(encoder_root, "text_encoder"),
                          "--out", out)
    assert "--clip" in err
    os.makedirs(out)
    open(os.path.join(out, "index.json"), "w").write("{}")
    err = _one_line_error(capsys, "--prompts", str(prompts), "--text-encoders", encoder_root, "--out", out)
    assert "--overwrite" in err
    assert not os.path.exists(os.path.join(out, "rank00000-00000.safetensors"))


def _error(fn):
    with pytest.raises(InputError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_encoder_errors_are_one_line(modules):
    llama, llama_tok, clip, clip_tok = modules
    no_pad = copy.deepcopy(llama_tok)
    no_pad.pad_token = None
    assert "pad token" in _error(lambda: HunyuanTextEncoders(llama, no_pad, clip, clip_tok))
    assert "'{}'" in _error(lambda: HunyuanTextEncoders(*modules, template={"template": "no slot", "crop_start": 0}))
    assert "dtype" in _error(lambda: te.resolve_dtype("float64", "cpu"))


def test_cache_errors_are_one_line(tmp_path, modules):
    error = _error

    assert "does not exist" in error(lambda: EmbeddingCache.open(str(tmp_path / "missing")))
    os.makedirs(tmp_path / "unfinished")
    assert "index.json" in error(lambda: EmbeddingCache.open(str(tmp_path / "unfinished")))
    path = str(tmp_path / "cache")
    write_embedding_cache(path, HunyuanTextEncoders(*modules), PROMPTS[:3], shard_size=2)
    cache = EmbeddingCache.open(path)
    message = error(lambda: cache.lookup([PROMPTS[0], "a purple elephant", "another one"]))
    assert "'a purple elephant'" in message and "precompute_embeddings" in message
    index_path = os.path.join(path, "index.json")
    index = json.load(open(index_path))
    json.dump(dict(index, version=99), open(index_path, "w"))
    message = error(lambda: EmbeddingCache.open(path))
    assert "version 99" in message and "version 1" in message
    open(index_path, "w").write(json.dumps(index)[:100])
    assert "corrupt" in error(lambda: EmbeddingCache.open(path))
    json.dump(index, open(index_path, "w"))
    os.remove(os.path.join(path, index["shards"][1]["file"]))
    assert index["shards"][1]["file"] in error(lambda: EmbeddingCache.open(path))
