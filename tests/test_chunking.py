"""ingest.chunking with the real tokenizer of the bundled model: sections, exact lines, token limits."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import pytest

from ingest.chunking import Chunk, chunk_document, split_lines
from ingest.loaders import Document, load_document
from kb.backends.embedders import ModelFolder

MAX = 256


@pytest.fixture(scope="module")
def count():
    tok = ModelFolder("st:all-MiniLM-L6-v2").tokenizer()

    def count_tokens(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [len(e.ids) for e in tok.encode_batch(list(texts))]

    return count_tokens


def md(text: str) -> Document:
    return load_document(text.encode("utf-8"), "markdown")


def spans(chunks: list[Chunk]) -> list[tuple[int, int, list[str]]]:
    return [(c.start_line, c.end_line, c.heading_path) for c in chunks]


def assert_whole_lines(text: str, chunks: list[Chunk]) -> None:
    lines = split_lines(text)
    for c in chunks:
        assert "\n".join(lines[c.start_line - 1 : c.end_line]) == c.text, (c.start_line, c.end_line, c.text)


def assert_fit(chunks: list[Chunk], count, limit: int = MAX) -> None:
    sizes = count([c.embed_text for c in chunks])
    assert max(sizes) <= limit, [(c.start_line, n) for c, n in zip(chunks, sizes, strict=True) if n > limit]
    for c in chunks:
        assert c.embed_text.endswith(c.text)


def lines_of(chunk: Chunk) -> range:
    return range(chunk.start_line, chunk.end_line + 1)


# --- structure --------------------------------------------------------------------------------------------

DOC = """# Payments Service

The payments service moves money between ledgers.

## Retries

Failed calls are retried with exponential backoff.
The first retry waits 200 ms.

- at most 5 attempts
- jitter of 20 percent

## Storage

| table | purpose |
|---|---|
| ledger | balances |

```sql
-- # not a heading: this is SQL inside a fence
SELECT * FROM ledger;
```

### Backups

Nightly snapshots are kept for 30 days.

## Alerts

Page the on-call engineer when the error rate exceeds 2 percent.
"""


def test_chunks_follow_headings_with_exact_lines_and_paths(count) -> None:
    chunks = chunk_document(md(DOC), count)
    assert spans(chunks) == [
        (1, 3, ["Payments Service"]),
        (5, 11, ["Payments Service", "Retries"]),
        (13, 22, ["Payments Service", "Storage"]),
        (24, 26, ["Payments Service", "Storage", "Backups"]),
        (28, 30, ["Payments Service", "Alerts"]),  # a sibling H2 pops the H3 off the path
    ]
    assert_whole_lines(DOC, chunks)
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert chunks[2].text.endswith("SELECT * FROM ledger;\n```")  # the '# ...' line inside the fence is code
    assert chunks[3].heading == "Payments Service › Storage › Backups"
    # The breadcrumb is embedded with the text, so each chunk "knows" where it sits.
    assert chunks[1].embed_text == "Payments Service › Retries\n" + chunks[1].text
    assert_fit(chunks, count)


def test_a_chunk_never_mixes_two_sections_even_when_small(count) -> None:
    # Every section is tiny: packing by size alone would merge them; headings must still cut.
    src = "\n\n".join(f"## Topic {i}\n\nFact number {i}." for i in range(12)) + "\n"
    chunks = chunk_document(md(src), count)
    assert len(chunks) == 12
    for i, c in enumerate(chunks):
        assert c.heading_path == [f"Topic {i}"]
        assert c.text == f"## Topic {i}\n\nFact number {i}."
    assert_whole_lines(src, chunks)


def test_headings_without_body_are_folded_into_the_next_section(count) -> None:
    src = "# Guide\n## Setup\n### Linux\n\nInstall the package with apt.\n"
    chunks = chunk_document(md(src), count)
    assert spans(chunks) == [(1, 5, ["Guide", "Setup", "Linux"])]
    assert chunks[0].text == src.rstrip("\n")


def test_title_argument_leads_the_breadcrumb(count) -> None:
    src = "## Install\n\nRun the installer.\n"
    chunks = chunk_document(md(src), count, title="Field Manual")
    assert chunks[0].embed_text == "Field Manual › Install\n## Install\n\nRun the installer."
    untitled = chunk_document(md("Just text, no heading.\n"), count)
    assert untitled[0].embed_text == "Just text, no heading." and untitled[0].heading_path == []


def test_front_matter_is_not_chunked_and_lines_refer_to_the_file(count) -> None:
    src = "---\ntitle: Runbook\nowner: sre-team\nsecret_note: not for chunks\n---\n"
    src += "# Runbook\n\nRestart the worker.\n"
    doc = md(src)
    assert doc.body_start_line == 6
    chunks = chunk_document(doc, count, title=doc.metadata["title"])
    assert spans(chunks) == [(6, 8, ["Runbook"])]
    assert "owner" not in chunks[0].embed_text and "secret_note" not in chunks[0].embed_text
    assert_whole_lines(src, chunks)


def test_malformed_front_matter_is_chunked_as_text(count) -> None:
    src = "---\ntitle: [broken\n---\nBody text here.\n"
    chunks = chunk_document(md(src), count)
    assert chunks[0].start_line == 1  # nothing hidden
    assert "Body text here." in chunks[-1].text


def test_code_block_and_table_are_kept_whole_when_they_fit(count) -> None:
    para = "This paragraph is here to fill the section with enough tokens to force several chunks. " * 3
    code = ["```python"] + [f"value_{i} = compute({i})" for i in range(10)] + ["```"]
    table = ["| key | value |", "|---|---|"] + [f"| k{i} | v{i} |" for i in range(8)]
    body = [para, "", *code, "", para, "", *table, "", para]
    src = "# Mixed\n\n" + "\n".join(body) + "\n"
    chunks = chunk_document(md(src), count, max_tokens=160)
    assert len(chunks) >= 3  # the section really had to be split
    lines = split_lines(src)
    code_start = lines.index("```python") + 1
    table_start = lines.index("| key | value |") + 1
    for first, n in ((code_start, len(code)), (table_start, len(table))):
        holders = [c for c in chunks if set(lines_of(c)) & set(range(first, first + n))]
        assert len(holders) == 1, [(c.start_line, c.end_line) for c in holders]
        assert holders[0].start_line <= first and first + n - 1 <= holders[0].end_line
    assert_whole_lines(src, chunks)
    assert_fit(chunks, count, 160)


def test_oversized_code_block_is_split_by_lines_and_fits(count) -> None:
    code = (
        ["```python"]
        + [f"result_{i} = service.call('endpoint_{i}', retries={i % 5})" for i in range(150)]
        + ["```"]
    )
    src = "# Client\n\nHow to call the service:\n\n" + "\n".join(code) + "\n"
    chunks = chunk_document(md(src), count)
    assert len(chunks) >= 4
    assert_whole_lines(src, chunks)  # split between lines, never inside one
    assert_fit(chunks, count)
    covered = {ln for c in chunks for ln in lines_of(c)}
    assert set(range(5, 5 + len(code))) <= covered
    assert all(c.heading_path == ["Client"] for c in chunks)


def test_oversized_table_is_split_by_rows_and_fits(count) -> None:
    rows = [f"| service-{i} | team {i % 7} | https://runbooks.example/{i} |" for i in range(120)]
    src = "## Owners\n\n| service | team | runbook |\n|---|---|---|\n" + "\n".join(rows) + "\n"
    chunks = chunk_document(md(src), count)
    assert len(chunks) >= 3
    assert_whole_lines(src, chunks)
    assert_fit(chunks, count)
    for row in rows:
        assert sum(row in c.text.split("\n") for c in chunks) == 1  # every row in exactly one chunk


def test_single_giant_paragraph_line_is_split_at_sentences(count) -> None:
    rng = random.Random(5)
    words = "ledger balance transfer account settlement audit payout refund invoice currency".split()
    sentences = [
        " ".join(rng.choice(words) for _ in range(rng.randint(8, 20))).capitalize() + "." for _ in range(120)
    ]
    line = " ".join(sentences)
    src = "# Notes\n\n" + line + "\n"
    chunks = chunk_document(md(src), count)
    pieces = [c for c in chunks if c.start_line == 3]
    assert len(pieces) >= 4
    assert all(c.end_line == 3 for c in pieces)
    assert_fit(chunks, count)
    pos = 0
    for c in pieces:  # verbatim slices of the line, in order, without overlap
        at = line.find(c.text, pos)
        assert at >= pos, c.text[:40]
        pos = at + len(c.text)
        assert c.text.rstrip().endswith(".")  # cut at a sentence end, not mid-sentence
    assert " ".join(c.text.strip() for c in pieces).split() == line.split()  # no word lost


def test_giant_line_without_sentences_is_split_at_words(count) -> None:
    line = " ".join(f"word{i}" for i in range(1500))
    chunks = chunk_document(md("Intro.\n\n" + line + "\n"), count)
    pieces = [c for c in chunks if c.start_line == 3]
    assert len(pieces) >= 3
    assert_fit(chunks, count)
    assert " ".join(c.text for c in pieces).split() == line.split()


@pytest.mark.parametrize(
    "line",
    [
        "{" + ",".join(f'"key{i}":{i}' for i in range(400)) + "}",  # minified JSON
        "See https://example.com/" + "/".join(f"seg{i}" for i in range(300)) + " for details.",  # a long URL
    ],
    ids=["minified-json", "long-url"],
)
def test_a_run_without_spaces_longer_than_the_window_still_fits(count, line: str) -> None:
    src = "# Data\n\n```\n" + line + "\n```\n"
    chunks = chunk_document(md(src), count)
    assert_fit(chunks, count)  # otherwise the model would silently drop everything past 256 tokens
    pieces = [c for c in chunks if c.start_line == 4]
    assert len(pieces) >= 2
    assert "".join(c.text for c in pieces) == line  # contiguous, verbatim, nothing lost


def test_crlf_file_gives_the_same_lines_as_lf(count) -> None:
    crlf = DOC.replace("\n", "\r\n")
    lf_chunks = chunk_document(md(DOC), count)
    crlf_chunks = chunk_document(md(crlf), count)
    assert spans(crlf_chunks) == spans(lf_chunks)
    assert [c.text for c in crlf_chunks] == [c.text for c in lf_chunks]
    assert not any("\r" in c.embed_text for c in crlf_chunks)


def test_crlf_front_matter_line_numbers(count) -> None:
    src = "---\r\ntitle: T\r\n---\r\n\r\n## Part\r\n\r\nText.\r\n"
    chunks = chunk_document(md(src), count)
    assert spans(chunks) == [(5, 7, ["Part"])]


def test_ordinals_are_a_sequence_across_sections_and_splits(count) -> None:
    long_para = " ".join(f"Sentence {i} about the rollout." for i in range(200))
    src = f"# A\n\nShort.\n\n## B\n\n{long_para}\n\n## C\n\nEnd.\n"
    chunks = chunk_document(md(src), count)
    assert len(chunks) >= 4
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    starts = [(c.start_line, c.end_line) for c in chunks]
    assert starts == sorted(starts)


def test_smaller_max_tokens_is_honoured(count) -> None:
    src = (
        "# S\n\n"
        + "\n\n".join(f"Paragraph {i} explains one more detail of the design." for i in range(40))
        + "\n"
    )
    chunks = chunk_document(md(src), count, max_tokens=64)
    assert len(chunks) > 5
    assert_fit(chunks, count, 64)
    assert_whole_lines(src, chunks)


def test_pdf_pages_are_attributed(count) -> None:
    text = (
        "The first page describes the quarterly roadmap and its three goals.\n\n"
        "The second page lists the risks: vendor delays, hiring and budget cuts.\n"
    )
    doc = Document(text=text, kind="pdf", page_starts=[1, 3])
    chunks = chunk_document(doc, count, max_tokens=32)
    assert [(c.start_line, c.page) for c in chunks] == [(1, 1), (3, 2)]


def test_unclosed_fence_and_empty_documents(count) -> None:
    src = "## Build\n\n```bash\nmake all\n## not a heading, still in the fence\n\n\n"
    chunks = chunk_document(md(src), count)
    assert spans(chunks) == [(1, 5, ["Build"])]  # ends at its last text line, not at the trailing blanks
    assert chunks[0].text == src.rstrip("\n")
    assert chunk_document(Document(text="\n\n  \n", kind="markdown"), count) == []
    only_front_matter = md("---\ntitle: x\n---\n")
    assert chunk_document(only_front_matter, count) == []


# --- property-style: generated documents ------------------------------------------------------------------

WORDS = (
    "api queue worker ledger retry backoff latency cache shard replica deploy rollback incident owner "
    "schema migration token budget service client server metric alert dashboard pager release"
).split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def generate(rng: random.Random) -> tuple[str, list[str], list[list[str]]]:
    """A markdown document, each line's kind ('heading', 'body', 'blank', 'meta') and its heading path."""
    lines: list[str] = []
    kinds: list[str] = []
    paths: list[list[str]] = []
    stack: list[tuple[int, str]] = []

    def add(line: str, kind: str) -> None:
        lines.append(line)
        kinds.append(kind)
        paths.append([t for _, t in stack])

    if rng.random() < 0.4:
        for line in ("---", f"title: {rng.choice(WORDS)}", "tags: [a, b]", "---"):
            add(line, "meta")
    for _ in range(rng.randint(4, 18)):
        roll = rng.random()
        if roll < 0.3:
            level = rng.randint(1, 4)
            title = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))).title()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            add("#" * level + " " + title, "heading")
        elif roll < 0.55:
            for _ in range(rng.randint(1, 4)):
                add(" ".join(_sentence(rng, rng.randint(4, 16)) for _ in range(rng.randint(1, 3))), "body")
        elif roll < 0.65:
            add(" ".join(_sentence(rng, rng.randint(5, 25)) for _ in range(rng.randint(40, 90))), "body")
        elif roll < 0.78:
            ordered = rng.random() < 0.5
            for i in range(rng.randint(2, 7)):
                add((f"{i + 1}. " if ordered else "- ") + _sentence(rng, rng.randint(3, 12)), "body")
        elif roll < 0.92:
            add("```" + rng.choice(["", "python", "bash"]), "body")
            for i in range(rng.choice([3, 8, 15, 90])):
                if rng.random() < 0.1:
                    add("", "blank")
                elif rng.random() < 0.1:
                    add(f"# comment {i}: not a heading", "body")
                else:
                    add(f"    call_{i}({rng.choice(WORDS)}, {i})", "body")
            add("```", "body")
        else:
            add("| name | owner |", "body")
            add("|---|---|", "body")
            for i in range(rng.choice([2, 5, 60])):
                add(f"| {rng.choice(WORDS)}-{i} | {rng.choice(WORDS)} |", "body")
        for _ in range(rng.choice([1, 1, 1, 2])):
            add("", "blank")
    return "\n".join(lines) + "\n", kinds, paths


def _locate(lines: list[str], chunks: list[Chunk]) -> list[tuple[int, int, int, int]]:
    """(start line, start col, end line, end col) of each chunk; checks it is verbatim and after the last."""
    out: list[tuple[int, int, int, int]] = []
    prev = (0, 0)
    for c in chunks:
        sl, el = c.start_line - 1, c.end_line - 1
        parts = c.text.split("\n")
        assert len(parts) == el - sl + 1, (c.start_line, c.end_line)
        if len(parts) == 1:
            from_col = prev[1] if prev[0] == sl else 0
            sc = lines[sl].find(parts[0], from_col)
            assert sc >= 0, f"chunk text is not at line {c.start_line}: {parts[0][:50]!r}"
            ec = sc + len(parts[0])
        else:
            assert lines[sl].endswith(parts[0]) and lines[el].startswith(parts[-1])
            assert parts[1:-1] == lines[sl + 1 : el]
            sc, ec = len(lines[sl]) - len(parts[0]), len(parts[-1])
        assert (sl, sc) >= prev, f"chunk at line {c.start_line} overlaps or precedes the previous one"
        prev = (el, ec)
        out.append((sl, sc, el, ec))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_generated_documents_keep_every_invariant(count, seed: int) -> None:
    rng = random.Random(seed)
    src, kinds, paths = generate(rng)
    if seed % 3 == 2:
        src = src.replace("\n", "\r\n")
    doc = md(src)
    chunks = chunk_document(doc, count)
    lines = split_lines(src)
    assert chunks, "a generated document always has text"
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    assert_fit(chunks, count)
    located = _locate(lines, chunks)

    covered: dict[int, list[str]] = {}
    for c, (sl, sc, el, ec) in zip(chunks, located, strict=True):
        chunk_kinds = [kinds[i] for i in range(sl, el + 1)]
        assert "meta" not in chunk_kinds  # front matter never chunked
        body_seen = False
        for k in chunk_kinds:  # headings only at the start: a chunk never runs into a second section
            if k == "body":
                body_seen = True
            assert not (k == "heading" and body_seen), f"chunk {c.ordinal} crosses a heading"
        assert c.heading_path == paths[el], (c.ordinal, c.heading_path, paths[el])
        for i in range(sl, el + 1):
            a = sc if i == sl else 0
            b = ec if i == el else len(lines[i])
            covered.setdefault(i, []).append(lines[i][a:b])

    for i, (line, kind) in enumerate(zip(lines, kinds, strict=False)):
        if kind == "body" and re.search(r"[^\W_]", line):  # a piece of only ``` or |---| is dropped
            assert i in covered, f"line {i + 1} is in no chunk: {line[:60]!r}"
            assert " ".join(covered[i]).split() == line.split(), f"words of line {i + 1} lost or duplicated"


def test_generator_produces_the_hard_cases(count) -> None:
    """The property test above is only as good as its documents: make sure they hold splits and sections."""
    split_lines_seen = multi_section = big_code = 0
    for seed in range(12):
        src, kinds, _ = generate(random.Random(seed))
        chunks = chunk_document(md(src), count)
        pairs = zip(chunks, chunks[1:], strict=False)
        split_lines_seen += sum(1 for a, b in pairs if a.end_line == b.start_line)
        multi_section += len({tuple(c.heading_path) for c in chunks}) > 2
        big_code += bool(re.search(r"call_80\(", src))
    assert split_lines_seen > 0 and multi_section > 3 and big_code > 0
