"""Prompt sets from .txt / .jsonl / .csv files (dancegrpo_hpc/data/prompts.py): cleaning,
deduplication, reference images, the seeded split and one-line errors."""

import json
import os

import pytest

from dancegrpo_hpc.checks import InputError
from dancegrpo_hpc.data.prompts import PromptSet, load_prompt_split, load_prompts, split_prompts


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(InputError, match=match) as exc:
        fn(*args, **kwargs)
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_txt_strips_drops_empty_and_deduplicates(tmp_path):
    path = write(tmp_path / "p.txt", "\ufeffa cat surfing\n\n  a dog  \n   \na cat surfing\nA cat surfing\n  a dog\n")
    ps = load_prompts(path)
    assert ps.prompts == ["a cat surfing", "a dog", "A cat surfing"]  # first occurrences, file order; case kept
    assert ps.reference_images is None and ps.ids is None
    assert (ps.dropped_empty, ps.dropped_duplicates) == (2, 2)
    assert "3 prompts (2 duplicates and 2 empty dropped)" in ps.summary()


def test_jsonl_default_and_named_field(tmp_path):
    lines = [{"prompt": " waves at dusk ", "caption": "x"}, {"prompt": ""}, {"prompt": "waves at dusk"},
             {"prompt": "a red kite", "caption": "y"}]
    path = write(tmp_path / "p.jsonl", "\n".join(json.dumps(item) for item in lines) + "\n\n")
    ps = load_prompts(path)
    assert ps.prompts == ["waves at dusk", "a red kite"]
    assert (ps.dropped_empty, ps.dropped_duplicates) == (1, 1)
    other = write(tmp_path / "c.jsonl", "\n".join(json.dumps({"text": t}) for t in ("one", "two", "one")))
    assert load_prompts(other, field="text").prompts == ["one", "two"]


def test_csv_vidprom_columns_with_reference_images(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "imgs" / name).write_bytes(b"")
    absolute = str(tmp_path / "imgs" / "b.png")
    path = write(tmp_path / "vidprom.csv",
                 "uuid,prompt,image,nsfw\n"
                 "u1,\"a fox, in snow\",imgs/a.png,0\n"
                 "u2,a fox in snow,imgs/a.png,0\n"
                 "u3,\"a fox, in snow\",imgs/b.png,0\n"  # same prompt, other image: kept
                 "u4,\"a fox, in snow\",imgs/a.png,0\n"  # same prompt and image: dropped
                 f"u5,a boat,{absolute},0\n"
                 "u6,  ,imgs/a.png,0\n")
    ps = load_prompts(path)
    assert ps.prompts == ["a fox, in snow", "a fox in snow", "a fox, in snow", "a boat"]
    assert ps.reference_images == [str(tmp_path / "imgs" / n) for n in ("a.png", "a.png", "b.png", "b.png")]
    assert ps.ids == ["u1", "u2", "u3", "u5"]
    assert (ps.dropped_empty, ps.dropped_duplicates) == (1, 1)


def test_csv_reference_image_column_and_prompt_only_csv(tmp_path):
    (tmp_path / "r.jpg").write_bytes(b"")
    ps = load_prompts(write(tmp_path / "i2v.csv", "prompt,reference_image\nhello,r.jpg\n"))
    assert ps.reference_images == [str(tmp_path / "r.jpg")]
    plain = load_prompts(write(tmp_path / "t2v.csv", "prompt\nhello\nworld\n"))
    assert plain.prompts == ["hello", "world"] and plain.reference_images is None and plain.ids is None


def test_split_is_seeded_disjoint_and_in_file_order(tmp_path):
    path = write(tmp_path / "p.txt", "\n".join(f"prompt {i}" for i in range(50)))
    a = load_prompt_split(path, eval_count=7, seed=3)
    b = load_prompt_split(path, eval_count=7, seed=3)
    c = load_prompt_split(path, eval_count=7, seed=4)
    assert a == b and a.eval.prompts != c.eval.prompts
    assert len(a.eval) == 7 and len(a.train) == 43
    assert sorted(a.train.prompts + a.eval.prompts, key=lambda p: int(p.split()[1])) == load_prompts(path).prompts
    for part in (a.train, a.eval):
        assert part.prompts == sorted(part.prompts, key=lambda p: int(p.split()[1]))
    assert len(load_prompt_split(path, eval_fraction=0.1).eval) == 5
    assert len(load_prompt_split(path, eval_fraction=0.001).eval) == 1  # a positive fraction holds out at least one
    whole = load_prompt_split(path)
    assert len(whole.train) == 50 and len(whole.eval) == 0


def test_split_keeps_images_and_ids_aligned(tmp_path):
    for i in range(6):
        (tmp_path / f"{i}.png").write_bytes(b"")
    rows = "".join(f"id{i},p{i},{i}.png\n" for i in range(6))
    split = load_prompt_split(write(tmp_path / "s.csv", "uuid,prompt,image\n" + rows), eval_count=2, seed=1)
    for part in (split.train, split.eval):
        for prompt, image, item_id in zip(part.prompts, part.reference_images, part.ids):
            assert image == str(tmp_path / f"{prompt[1:]}.png") and item_id == f"id{prompt[1:]}"


def test_errors_are_one_line(tmp_path):
    one_line_error("does not exist", load_prompts, str(tmp_path / "missing.txt"))
    one_line_error(r"unknown extension '\.md'; use \.txt, \.jsonl, \.csv", load_prompts, write(tmp_path / "p.md", "x"))
    msg = one_line_error("no column 'prompt'; columns found: 'uuid', 'text'", load_prompts,
                         write(tmp_path / "bad.csv", "uuid,text\n1,hello\n"))
    assert "bad.csv" in msg
    one_line_error("no column 'caption'", load_prompts, write(tmp_path / "c.csv", "prompt\nx\n"), field="caption")
    one_line_error("no prompts", load_prompts, write(tmp_path / "empty.txt", "\n  \n\n"))
    one_line_error("no prompts", load_prompts, write(tmp_path / "zero.txt", ""))
    one_line_error("line 2 is not valid JSON", load_prompts, write(tmp_path / "j.jsonl", '{"prompt": "a"}\n{oops\n'))
    one_line_error("line 1 has no field 'prompt'; fields found: text", load_prompts,
                   write(tmp_path / "k.jsonl", '{"text": "a"}\n'))
    one_line_error("row 3: empty reference image", load_prompts,
                   write(tmp_path / "img.csv", "prompt,image\na,a.png\nb,\n"), check_images=False)
    one_line_error("1 reference image\\(s\\) not found, the first: .*nope.png", load_prompts,
                   write(tmp_path / "nope.csv", "prompt,image\na,nope.png\n"))
    one_line_error("field / image_field need .jsonl or .csv", load_prompts, write(tmp_path / "f.txt", "a"), field="x")
    ps = load_prompts(write(tmp_path / "two.txt", "a\nb\n"))
    one_line_error("leave none to train on", split_prompts, ps, eval_count=2)
    one_line_error("eval_fraction must lie in", split_prompts, ps, eval_fraction=1.0)
    one_line_error("not both", split_prompts, ps, eval_count=1, eval_fraction=0.5)
    one_line_error("eval_count must be an integer", split_prompts, ps, eval_count=-1)


def test_subset_and_missing_image_check_off(tmp_path):
    ps = load_prompts(write(tmp_path / "i.csv", "prompt,image\na,x.png\n"), check_images=False)
    assert ps.reference_images == [os.path.join(str(tmp_path), "x.png")]
    assert isinstance(ps.subset([0]), PromptSet) and ps.subset([]).prompts == []


@pytest.mark.parametrize("name, body, line", [
    ("latin.txt", b"a cat\nna\xefve dog\n", 2),
    ("latin.csv", b"prompt,uuid\na cat,1\nna\xefve dog,2\n", 3),
    ("latin.jsonl", b'{"prompt": "a cat"}\n{"prompt": "na\xefve dog"}\n', 2),
    ("header.csv", b"pr\xf6mpt\na cat\n", 1),  # the header row is read before the rows
])
def test_non_utf8_prompt_file_is_one_line_naming_file_and_line(tmp_path, name, body, line):
    """A Latin-1 prompt file gave a UnicodeDecodeError traceback mid-read, without the file."""
    (tmp_path / name).write_bytes(body)
    message = one_line_error("not UTF-8 text", load_prompts, str(tmp_path / name))
    assert name in message and f"on line {line}" in message and "save it as UTF-8" in message, message
