"""The methods text with references (qsm_bids.report.boilerplate): names, parameters, citations."""

from __future__ import annotations

import copy
import importlib.metadata
import re
from html.parser import HTMLParser

import pytest

from qsm_bids import registry
from qsm_bids.recipe import load_recipe
from qsm_bids.report.boilerplate import (
    ALGORITHMS,
    Boilerplate,
    algorithm_name,
    build_boilerplate,
    format_value,
    write_citation_files,
)
from qsm_bids.report.references import REFERENCES

VERSIONS = {
    "qsm_bids": "0.0.test",
    "Nipype": "9.9",
    "ANTsPy": "1.2.3",
    "NumPy": "4.5",
    "NiBabel": "6.7",
}
DOI = re.compile(r"^10\.\d{4,9}/\S+$")
MARK = re.compile(r"⟦([A-Za-z0-9_]+)⟧")
#: Algorithms with nothing to cite: no background removal, and a textbook weighted fit.
UNCITED = {("background", "none"), ("r2star", "loglinear")}
#: Registry names that are also plain English words the prose may use.
ENGLISH = {"mean", "mask", "none", "magnitude"}


def _prose(bp: Boilerplate) -> str:
    """The methods paragraphs of the Markdown, without the reference list."""
    return bp.markdown.split("## References")[0]


def _default(**kw) -> Boilerplate:
    kw.setdefault("registration", True)
    return build_boilerplate(load_recipe("default").provenance(), versions=VERSIONS, **kw)


def _all_algorithms() -> list[tuple[str, str]]:
    return [(s, a) for s in registry.STAGES for a in registry.algorithms(s)]


@pytest.mark.parametrize(("stage", "algorithm"), _all_algorithms())
def test_every_registry_algorithm_has_a_published_name_and_reference(stage, algorithm):
    entry = ALGORITHMS[(stage, algorithm)]
    assert algorithm_name(stage, algorithm) == entry.name
    assert entry.name != algorithm and "_" not in entry.name
    if (stage, algorithm) not in UNCITED:
        assert entry.references, f"{stage}/{algorithm} cites nothing"
    assert all(k in REFERENCES for k in entry.references)
    text = entry.describe(registry.resolve(stage, algorithm, {}))
    cited = set(MARK.findall(text))
    assert set(entry.references) <= cited <= set(REFERENCES)
    plain = MARK.sub("", text)
    assert "_" not in plain
    if algorithm not in ENGLISH:
        assert not re.search(rf"\b{re.escape(algorithm)}\b", plain), plain


def test_registry_and_text_cover_the_same_algorithms():
    assert set(ALGORITHMS) == set(_all_algorithms())


def test_references_are_complete_and_dois_well_formed():
    for key, ref in REFERENCES.items():
        assert ref.key == key
        assert ref.authors and all(a.strip() for a in ref.authors)
        assert 1990 <= ref.year <= 2030
        assert ref.title and ref.journal and ref.volume and ref.pages
        assert ref.doi is None or DOI.match(ref.doi), ref.doi
    # the two whose DOI could not be checked are cited without one (see references.py)
    assert {k for k, r in REFERENCES.items() if r.doi is None} == {
        "chatnuntawech2017sstv",
        "straub2017",
    }


def test_default_recipe_names_its_algorithms_and_cites_six_references_with_dois():
    bp = _default(echo_times_s=[0.004, 0.008, 0.012], field_strength_t=3.0)
    prose = _prose(bp)
    for phrase in (
        "projection onto dipole fields (PDF; Liu et al., 2011)",
        "ROMEO",
        "MCPC-3D-S (Eckstein et al., 2018)",
        "fast nonlinear susceptibility inversion (FANSI; Milovic et al., 2018)",
        "weak-harmonic term",
        "Milovic et al., 2019",
        "ARLO; Pei et al., 2015",
        "MNI152NLin2009aSym; Fonov et al., 2009; Fonov et al., 2011",
        "ANTs (Avants et al., 2008; Tustison et al., 2021)",
        "AAL3 atlas (Rolls et al., 2020)",
        "Nipype 9.9 (Gorgolewski et al., 2011)",
        "BIDS; Gorgolewski et al., 2016",
        "QSM Consensus Organization Committee, 2024",
        "qsm_bids 0.0.test",
        "ANTsPy 1.2.3",
        "echo times 4, 8, 12 ms",
        "3 T",
        "2 susceptibility-feedback passes",
    ):
        assert phrase in prose, phrase
    keys = [r.key for r in bp.references]
    assert len(keys) == len(set(keys)) >= 6
    with_doi = [r for r in bp.references if r.doi and DOI.match(r.doi)]
    assert len(with_doi) >= 6
    for ref in with_doi:
        assert f"https://doi.org/{ref.doi}" in bp.markdown
    # every citation in the prose is in the list, and every listed reference is cited
    assert len(re.findall(r"^\d+\. ", bp.markdown, flags=re.M)) == len(bp.references)
    # no code identifiers: no registry names, no parameter names
    body = prose.split("\n", 2)[2].replace("qsm_bids", "")
    assert "_" not in body
    for name in ("pdf", "nltv", "arlo", "mcpc3ds", "magnitude_weights"):
        assert not re.search(rf"\b{name}\b", body), name


def test_parameters_in_the_text_follow_the_provenance():
    prov = load_recipe("default").provenance()
    before = _prose(build_boilerplate(prov, registration=False, versions=VERSIONS))
    assert "0.11 times the root-mean-square" in before
    assert "at most 50 iterations, relative tolerance 3×10⁻⁴" in before
    assert "4 mm radius" in before
    changed = copy.deepcopy(prov)
    changed["inversion"]["Parameters"]["lambda_per_sigma"] = 0.23
    changed["background"]["Parameters"]["max_iter"] = 37
    changed["background"]["Parameters"]["tolerance"] = 0.002
    changed["background"]["Parameters"]["dipole_feedback"] = 3
    changed["mask"]["Parameters"]["erode_mm"] = 5.5
    after = _prose(build_boilerplate(changed, registration=False, versions=VERSIONS))
    assert "0.23 times the root-mean-square" in after and "0.11 times" not in after
    assert "at most 37 iterations, relative tolerance 0.002" in after
    assert "3 susceptibility-feedback passes" in after
    assert "5.5 mm radius" in after and "4 mm radius" not in after


def test_options_switch_sentences_and_references_on_and_off():
    prov = load_recipe("default").provenance()
    prov["background"]["Parameters"]["dipole_feedback"] = 0
    prov["inversion"]["Parameters"]["weak_harmonic"] = False
    bp = build_boilerplate(prov, registration=False, versions=VERSIONS)
    keys = {r.key for r in bp.references}
    assert "feedback" not in bp.markdown
    assert "milovic2019wh" not in keys and "liu2017tfi" not in keys
    assert not keys & {"fonov2009", "avants2008", "rolls2020aal3", "tustison2021antsx"}
    assert "AAL3" not in bp.markdown
    bp = build_boilerplate(prov, registration=False, segmentation="aseg", versions=VERSIONS)
    assert 'user-supplied segmentation "aseg"' in bp.markdown


def test_same_author_and_year_get_letter_suffixes():
    prov = load_recipe("medi").provenance()  # PDF (Liu 2011) and MEDI (Liu 2011)
    prose = _prose(build_boilerplate(prov, registration=False, versions=VERSIONS))
    assert "PDF; Liu et al., 2011a" in prose
    assert "MEDI; Liu et al., 2011b" in prose
    assert "Liu et al., 2013" in prose


def _bib_entries(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """A small BibTeX reader: (type, key, fields) per entry; fails on unbalanced braces."""
    entries = []
    i = 0
    while (at := text.find("@", i)) >= 0:
        head = re.match(r"@(\w+)\{([^,\s]+),", text[at:])
        assert head, text[at : at + 40]
        depth, start = 0, at + text[at:].index("{")
        for j in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
        assert depth == 0, f"unbalanced braces in {head.group(2)}"
        body = text[at + head.end() : j]
        fields = dict(re.findall(r"^\s*(\w+)\s*=\s*\{(.*)\},?\s*$", body, flags=re.M))
        entries.append((head.group(1), head.group(2), fields))
        i = j + 1
    return entries


@pytest.mark.parametrize("recipe", ["default", "fast", "tfi", "medi"])
def test_bibtex_has_one_entry_per_reference(recipe):
    bp = build_boilerplate(load_recipe(recipe).provenance(), registration=True, versions=VERSIONS)
    entries = _bib_entries(bp.bibtex)
    assert [key for _, key, _ in entries] == [r.key for r in bp.references]
    for (kind, _, fields), ref in zip(entries, bp.references, strict=True):
        assert kind == "article"
        assert {"author", "title", "journal", "year"} <= set(fields)
        assert fields["year"] == str(ref.year)
        assert fields.get("doi") == ref.doi


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.hrefs: list[str] = []
        self.ids: list[str] = []
        self.starts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.starts.append(tag)
        attrs = dict(attrs)
        if tag == "a":
            self.hrefs.append(attrs["href"])
        if "id" in attrs:
            self.ids.append(attrs["id"])
        self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack.pop() == tag


def test_html_escapes_and_links_references():
    evil = '<script>alert("x")</script>&'
    bp = build_boilerplate(
        load_recipe("default").provenance(),
        registration=True,
        segmentation=evil,
        versions=VERSIONS,
    )
    assert "<script>" not in bp.html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in bp.html
    tags = _Tags()
    tags.feed(bp.html)
    assert tags.stack == [] and "script" not in tags.starts
    n = len(bp.references)
    assert tags.ids == [f"qsm-ref-{i}" for i in range(1, n + 1)]
    dois = [h for h in tags.hrefs if h.startswith("https://doi.org/")]
    assert dois == [f"https://doi.org/{r.doi}" for r in bp.references if r.doi]
    cites = {h for h in tags.hrefs if h.startswith("#qsm-ref-")}
    assert cites == {f"#qsm-ref-{i}" for i in range(1, n + 1)}


def test_write_citation_files(tmp_path):
    bp = _default()
    paths = write_citation_files(tmp_path / "logs", bp)
    assert sorted(p.name for p in paths) == ["CITATION.bib", "CITATION.html", "CITATION.md"]
    assert (tmp_path / "logs" / "CITATION.md").read_text(encoding="utf-8") == bp.markdown
    assert (tmp_path / "logs" / "CITATION.bib").read_text(encoding="utf-8") == bp.bibtex
    assert bp.html in (tmp_path / "logs" / "CITATION.html").read_text(encoding="utf-8")
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == sorted(p.name for p in paths)


def test_installed_versions_by_default_and_partial_provenance():
    bp = build_boilerplate(load_recipe("fast").provenance(), registration=False)
    assert f"NumPy {importlib.metadata.version('numpy')}" in bp.markdown
    assert f"Nipype {importlib.metadata.version('nipype')}" in bp.markdown
    # an old or foreign sidecar: missing stages are left out, an unknown algorithm is named
    bp = build_boilerplate(
        {"Pipeline": "x", "inversion": {"Algorithm": "future", "Parameters": {"k": 2}}},
        registration=False,
        versions={},
    )
    assert "future" in bp.markdown and "k = 2" in bp.markdown
    assert "Background fields" not in bp.markdown


def test_a_derivative_sidecar_gives_the_same_text():
    prov = load_recipe("tv").provenance()
    sidecar = {
        "EchoTime": [0.005, 0.01],
        "MagneticFieldStrength": 7.0,
        "Pipeline": prov["Pipeline"],
        "SoftwareVersion": "qsm_bids 0.0.test",
        "Stages": {k: v for k, v in prov.items() if k != "Pipeline"},
    }
    from_sidecar = build_boilerplate(sidecar, registration=False, versions=VERSIONS)
    direct = build_boilerplate(
        prov, registration=False, versions=VERSIONS, echo_times_s=[0.005, 0.01],
        field_strength_t=7.0,
    )  # fmt: skip
    assert from_sidecar == direct
    assert "echo times 5, 10 ms), acquired at 7 T" in direct.markdown


@pytest.mark.parametrize(
    ("value", "text"),
    [(3e-4, "3×10⁻⁴"), (1e5, "10⁵"), (0.11, "0.11"), (200, "200"), ([5.0, 5.0], "5, 5"),
     (0.0, "0"), (2.5e-6, "2.5×10⁻⁶"), (16.05, "16.05")],
)  # fmt: skip
def test_format_value(value, text):
    assert format_value(value) == text
