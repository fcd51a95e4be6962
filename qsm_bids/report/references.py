"""The bibliography of the methods text: every paper that :mod:`.boilerplate` can cite.

Each entry is a :class:`Reference` keyed by a short identifier. The DOIs were checked
against public reference lists (SEPIA's and QSMxT's citation lists, the fMRIPrep
boilerplate bibliography, nilearn's template documentation, the papers' PubMed Central
pages and the authors' own code headers) in December 2026. Where no DOI could be checked,
the entry has ``doi=None`` and a comment saying so; it is cited without one rather than
with a guessed one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reference:
    """One cited paper.

    Attributes
    ----------
    key : str
        Identifier (also the BibTeX key).
    authors : tuple of str
        Authors as ``"Surname, Initials"``; ``et_al`` marks a list cut short.
    year : int
        Year of publication.
    title : str
        Title of the paper.
    journal : str
        Journal name, written out.
    volume : str
        Volume (and issue or supplement).
    pages : str
        Pages or article number.
    doi : str or None
        The DOI (``10.x/...``), or None where none could be verified.
    et_al : bool
        True when ``authors`` lists only the first authors.
    """

    key: str
    authors: tuple[str, ...]
    year: int
    title: str
    journal: str
    volume: str
    pages: str
    doi: str | None
    et_al: bool = False

    @property
    def first_surname(self) -> str:
        """Surname of the first author (or the group name)."""
        return self.authors[0].split(",")[0].strip()

    def author_year(self, suffix: str = "") -> str:
        """In-text label, e.g. ``"Liu et al., 2011a"`` or ``"Schofield and Zhu, 2003"``; a
        group author is named alone (``"QSM Consensus Organization Committee, 2024"``)."""
        if "," not in self.authors[0] or (len(self.authors) == 1 and not self.et_al):
            who = self.first_surname
        elif len(self.authors) == 2 and not self.et_al:
            who = f"{self.first_surname} and {self.authors[1].split(',')[0].strip()}"
        else:
            who = f"{self.first_surname} et al."
        return f"{who}, {self.year}{suffix}"

    def author_list(self) -> str:
        """Authors for a reference list: ``"Liu T, Khalidov I, ..."`` (``et al.`` if cut)."""
        names = [_vancouver(a) for a in self.authors]
        text = ", ".join(names)
        return text + (", et al." if self.et_al else "")

    def citation(self) -> str:
        """The full reference as plain text (without the DOI)."""
        return (
            f"{self.author_list()} ({self.year}). {self.title}. {self.journal} "
            f"{self.volume}:{self.pages}."
        )

    def bibtex(self) -> str:
        """The entry as a BibTeX ``@article``."""
        names = [a if "," in a else "{" + a + "}" for a in self.authors]
        authors = " and ".join(names) + (" and others" if self.et_al else "")
        fields = [
            ("author", authors),
            ("title", "{" + _bib_escape(self.title) + "}"),
            ("journal", _bib_escape(self.journal)),
            ("year", str(self.year)),
            ("volume", _bib_escape(self.volume)),
            ("pages", _bib_escape(self.pages.replace("-", "--"))),
        ]
        if self.doi:
            fields.append(("doi", self.doi))
        body = ",\n".join(f"  {name} = {{{value}}}" for name, value in fields)
        return f"@article{{{self.key},\n{body}\n}}\n"


def _vancouver(author: str) -> str:
    """``"Liu, T."`` -> ``"Liu T"``; a group name is kept as is."""
    if "," not in author:
        return author
    surname, initials = (s.strip() for s in author.split(",", 1))
    return f"{surname} {initials.replace('.', '').replace(' ', '')}"


def _bib_escape(text: str) -> str:
    """Escape the characters that BibTeX/LaTeX read as markup."""
    return re.sub(r"([&%$#_])", r"\\\1", text)


def _ref(key: str, authors: str, *fields: Any, et_al: bool = False) -> Reference:
    """A :class:`Reference` with ``authors`` given as one ``;``-separated string."""
    return Reference(key, tuple(a.strip() for a in authors.split(";")), *fields, et_al=et_al)


_MRM = "Magnetic Resonance in Medicine"

# fmt: off
#: Every reference the methods text may cite, by key.
REFERENCES: dict[str, Reference] = {
    r.key: r
    for r in (
        # --- software, data structure, template, atlas --------------------------------------
        _ref("gorgolewski2011nipype",
             "Gorgolewski, K.; Burns, C. D.; Madison, C.; Clark, D.; Halchenko, Y. O.; "
             "Waskom, M. L.; Ghosh, S. S.", 2011,
             "Nipype: a flexible, lightweight and extensible neuroimaging data processing "
             "framework in Python", "Frontiers in Neuroinformatics", "5", "13",
             "10.3389/fninf.2011.00013"),
        _ref("gorgolewski2016bids",
             "Gorgolewski, K. J.; Auer, T.; Calhoun, V. D.", 2016,
             "The brain imaging data structure, a format for organizing and describing "
             "outputs of neuroimaging experiments", "Scientific Data", "3", "160044",
             "10.1038/sdata.2016.44", et_al=True),
        _ref("harris2020numpy",
             "Harris, C. R.; Millman, K. J.; van der Walt, S. J.", 2020,
             "Array programming with NumPy", "Nature", "585", "357-362",
             "10.1038/s41586-020-2649-2", et_al=True),
        _ref("consensus2024",
             "QSM Consensus Organization Committee; Bilgic, B.; Costagli, M.; Chan, K.-S.",
             2024,
             "Recommended implementation of quantitative susceptibility mapping for clinical "
             "research in the brain: a consensus of the ISMRM electro-magnetic tissue "
             "properties study group", _MRM, "91(5)", "1834-1862", "10.1002/mrm.30006",
             et_al=True),
        _ref("fonov2009",
             "Fonov, V. S.; Evans, A. C.; McKinstry, R. C.; Almli, C. R.; Collins, D. L.",
             2009,
             "Unbiased nonlinear average age-appropriate brain templates from birth to "
             "adulthood", "NeuroImage", "47(Suppl. 1)", "S102",
             "10.1016/S1053-8119(09)70884-5"),
        _ref("fonov2011",
             "Fonov, V.; Evans, A. C.; Botteron, K.; Almli, C. R.; McKinstry, R. C.; "
             "Collins, D. L.", 2011,
             "Unbiased average age-appropriate atlases for pediatric studies", "NeuroImage",
             "54(1)", "313-327", "10.1016/j.neuroimage.2010.07.033"),
        _ref("avants2008",
             "Avants, B. B.; Epstein, C. L.; Grossman, M.; Gee, J. C.", 2008,
             "Symmetric diffeomorphic image registration with cross-correlation: evaluating "
             "automated labeling of elderly and neurodegenerative brain",
             "Medical Image Analysis", "12(1)", "26-41", "10.1016/j.media.2007.06.004"),
        _ref("tustison2021antsx",
             "Tustison, N. J.; Cook, P. A.; Holbrook, A. J.", 2021,
             "The ANTsX ecosystem for quantitative biological and medical imaging",
             "Scientific Reports", "11", "9068", "10.1038/s41598-021-87564-6", et_al=True),
        _ref("rolls2020aal3",
             "Rolls, E. T.; Huang, C.-C.; Lin, C.-P.; Feng, J.; Joliot, M.", 2020,
             "Automated anatomical labelling atlas 3", "NeuroImage", "206", "116189",
             "10.1016/j.neuroimage.2019.116189"),
        # --- masking ----------------------------------------------------------------------
        _ref("stewart2022qsmxt",
             "Stewart, A. W.; Robinson, S. D.; O'Brien, K.", 2022,
             "QSMxT: robust masking and artifact reduction for quantitative susceptibility "
             "mapping", _MRM, "87(3)", "1289-1300", "10.1002/mrm.29048", et_al=True),
        # --- unwrapping and echo combination ----------------------------------------------
        _ref("dymerska2021romeo",
             "Dymerska, B.; Eckstein, K.; Bachrata, B.; Siow, B.; Trattnig, S.; "
             "Shmueli, K.; Robinson, S. D.", 2021,
             "Phase unwrapping with a rapid opensource minimum spanning tree algorithm "
             "(ROMEO)", _MRM, "85(4)", "2294-2308", "10.1002/mrm.28563"),
        _ref("schofield2003",
             "Schofield, M. A.; Zhu, Y.", 2003,
             "Fast phase unwrapping algorithm for interferometric applications",
             "Optics Letters", "28(14)", "1194-1196", "10.1364/OL.28.001194"),
        _ref("eckstein2018aspire",
             "Eckstein, K.; Dymerska, B.; Bachrata, B.; Bogner, W.; Poljanc, K.; "
             "Trattnig, S.; Robinson, S. D.", 2018,
             "Computationally efficient combination of multi-channel phase data from "
             "multi-echo acquisitions (ASPIRE)", _MRM, "79(6)", "2996-3006",
             "10.1002/mrm.26963"),
        _ref("liu2013nonlinear",
             "Liu, T.; Wisnieff, C.; Lou, M.; Chen, W.; Spincemaille, P.; Wang, Y.", 2013,
             "Nonlinear formulation of the magnetic field to source relationship for robust "
             "quantitative susceptibility mapping", _MRM, "69(2)", "467-476",
             "10.1002/mrm.24272"),
        # --- background field removal -----------------------------------------------------
        _ref("liu2011pdf",
             "Liu, T.; Khalidov, I.; de Rochefort, L.; Spincemaille, P.; Liu, J.; "
             "Tsiouris, A. J.; Wang, Y.", 2011,
             "A novel background field removal method for MRI using projection onto dipole "
             "fields (PDF)", "NMR in Biomedicine", "24(9)", "1129-1136", "10.1002/nbm.1670"),
        _ref("schweser2011sharp",
             "Schweser, F.; Deistung, A.; Lehr, B. W.; Reichenbach, J. R.", 2011,
             "Quantitative imaging of intrinsic magnetic tissue properties using MRI signal "
             "phase: an approach to in vivo brain iron metabolism?", "NeuroImage", "54(4)",
             "2789-2807", "10.1016/j.neuroimage.2010.10.070"),
        _ref("wu2012vsharp",
             "Wu, B.; Li, W.; Guidon, A.; Liu, C.", 2012,
             "Whole brain susceptibility mapping using compressed sensing", _MRM, "67(1)",
             "137-147", "10.1002/mrm.23000"),
        _ref("sun2014resharp",
             "Sun, H.; Wilman, A. H.", 2014,
             "Background field removal using spherical mean value filtering and Tikhonov "
             "regularization", _MRM, "71(3)", "1151-1157", "10.1002/mrm.24765"),
        _ref("wen2014ismv",
             "Wen, Y.; Zhou, D.; Liu, T.; Spincemaille, P.; Wang, Y.", 2014,
             "An iterative spherical mean value method for background field removal in MRI",
             _MRM, "72(4)", "1065-1071", "10.1002/mrm.24998"),
        _ref("zhou2014lbv",
             "Zhou, D.; Liu, T.; Spincemaille, P.; Wang, Y.", 2014,
             "Background field removal by solving the Laplacian boundary value problem",
             "NMR in Biomedicine", "27(3)", "312-319", "10.1002/nbm.3064"),
        # --- dipole inversion -------------------------------------------------------------
        _ref("shmueli2009tkd",
             "Shmueli, K.; de Zwart, J. A.; van Gelderen, P.; Li, T.-Q.; Dodd, S. J.; "
             "Duyn, J. H.", 2009,
             "Magnetic susceptibility mapping of brain tissue in vivo using MRI phase data",
             _MRM, "62(6)", "1510-1522", "10.1002/mrm.22135"),
        _ref("wharton2010tkd",
             "Wharton, S.; Schäfer, A.; Bowtell, R.", 2010,
             "Susceptibility mapping in the human brain using threshold-based k-space "
             "division", _MRM, "63(5)", "1292-1304", "10.1002/mrm.22334"),
        _ref("bilgic2014l2",
             "Bilgic, B.; Chatnuntawech, I.; Fan, A. P.", 2014,
             "Fast image reconstruction with L2-regularization",
             "Journal of Magnetic Resonance Imaging", "40(1)", "181-191",
             "10.1002/jmri.24365", et_al=True),
        _ref("bilgic2014l1",
             "Bilgic, B.; Fan, A. P.; Polimeni, J. R.; Cauley, S. F.; Bianciardi, M.; "
             "Adalsteinsson, E.; Wald, L. L.; Setsompop, K.", 2014,
             "Fast quantitative susceptibility mapping with L1-regularization and automatic "
             "parameter selection", _MRM, "72(5)", "1444-1459", "10.1002/mrm.25029"),
        _ref("milovic2018fansi",
             "Milovic, C.; Bilgic, B.; Zhao, B.; Acosta-Cabronero, J.; Tejos, C.", 2018,
             "Fast nonlinear susceptibility inversion with variational regularization", _MRM,
             "80(2)", "814-821", "10.1002/mrm.27073"),
        _ref("milovic2019wh",
             "Milovic, C.; Bilgic, B.; Zhao, B.; Langkammer, C.; Tejos, C.; "
             "Acosta-Cabronero, J.", 2019,
             "Weak-harmonic regularization for quantitative susceptibility mapping", _MRM,
             "81(2)", "1399-1411", "10.1002/mrm.27483"),
        _ref("kames2018rts",
             "Kames, C.; Wiggermann, V.; Rauscher, A.", 2018,
             "Rapid two-step dipole inversion for susceptibility mapping with sparsity priors",
             "NeuroImage", "167", "276-283", "10.1016/j.neuroimage.2017.11.018"),
        _ref("polak2020ndi",
             "Polak, D.; Chatnuntawech, I.; Yoon, J.", 2020,
             "Nonlinear dipole inversion (NDI) enables robust quantitative susceptibility "
             "mapping (QSM)", "NMR in Biomedicine", "33(12)", "e4271", "10.1002/nbm.4271",
             et_al=True),
        _ref("li2015ilsqr",
             "Li, W.; Wang, N.; Yu, F.", 2015,
             "A method for estimating and removing streaking artifacts in quantitative "
             "susceptibility mapping", "NeuroImage", "108", "111-122",
             "10.1016/j.neuroimage.2014.12.043", et_al=True),
        _ref("liu2011medi",
             "Liu, T.; Liu, J.; de Rochefort, L.; Spincemaille, P.; Khalidov, I.; "
             "Ledoux, J. R.; Wang, Y.", 2011,
             "Morphology enabled dipole inversion (MEDI) from a single-angle acquisition: "
             "comparison with COSMOS in human brain imaging", _MRM, "66(3)", "777-783",
             "10.1002/mrm.22816"),
        _ref("liu2012medi",
             "Liu, J.; Liu, T.; de Rochefort, L.", 2012,
             "Morphology enabled dipole inversion for quantitative susceptibility mapping "
             "using structural consistency between the magnitude image and the "
             "susceptibility map", "NeuroImage", "59(3)", "2560-2568",
             "10.1016/j.neuroimage.2011.08.082", et_al=True),
        # DOI not verified (no public list checked here carried it): cited without one.
        _ref("chatnuntawech2017sstv",
             "Chatnuntawech, I.; McDaniel, P.; Cauley, S. F.", 2017,
             "Single-step quantitative susceptibility mapping with variational penalties",
             "NMR in Biomedicine", "30(4)", "e3570", None, et_al=True),
        _ref("liu2017tfi",
             "Liu, Z.; Kee, Y.; Zhou, D.; Wang, Y.; Spincemaille, P.", 2017,
             "Preconditioned total field inversion (TFI) method for quantitative "
             "susceptibility mapping", _MRM, "78(1)", "303-315", "10.1002/mrm.26331"),
        _ref("langkammer2015tgv",
             "Langkammer, C.; Bredies, K.; Poser, B. A.", 2015,
             "Fast quantitative susceptibility mapping using 3D EPI and total generalized "
             "variation", "NeuroImage", "111", "622-630", "10.1016/j.neuroimage.2015.02.041",
             et_al=True),
        # --- referencing and relaxometry --------------------------------------------------
        # DOI not verified (no public list checked here carried it): cited without one.
        _ref("straub2017",
             "Straub, S.; Schneider, T. M.; Emmerich, J.", 2017,
             "Suitable reference tissues for quantitative susceptibility mapping of the "
             "brain", _MRM, "78(1)", "204-214", None, et_al=True),
        _ref("liu2018medi0",
             "Liu, Z.; Spincemaille, P.; Yao, Y.; Zhang, Y.; Wang, Y.", 2018,
             "MEDI+0: morphology enabled dipole inversion with automatic uniform "
             "cerebrospinal fluid zero reference for quantitative susceptibility mapping",
             _MRM, "79(5)", "2795-2803", "10.1002/mrm.26946"),
        _ref("pei2015arlo",
             "Pei, M.; Nguyen, T. D.; Thimmappa, N. D.; Salustri, C.; Dong, F.; "
             "Cooper, M. A.; Li, J.; Prince, M. R.; Wang, Y.", 2015,
             "Algorithm for fast monoexponential fitting based on Auto-Regression on Linear "
             "Operations (ARLO) of data", _MRM, "73(2)", "843-850", "10.1002/mrm.25137"),
    )
}


def labels(keys: list[str]) -> dict[str, str]:
    """In-text labels of the cited ``keys``, with a/b suffixes where two share author-year.

    Parameters
    ----------
    keys : list of str
        Cited keys in order of first citation.

    Returns
    -------
    dict
        Key -> label such as ``"Liu et al., 2011a"``.
    """
    base = {k: REFERENCES[k].author_year() for k in keys}
    out: dict[str, str] = {}
    for key in keys:
        same = [k for k in keys if base[k] == base[key]]
        suffix = "abcdefghij"[same.index(key)] if len(same) > 1 else ""
        out[key] = REFERENCES[key].author_year(suffix)
    return out
