"""Presidio set up to run offline: pattern recognizers over a blank spaCy pipeline (`dlp.engine.build_engine`).

`AnalyzerEngine()` with its defaults loads (and tries to download) `en_core_web_lg`; this machine and
our users' gateways may reach no model hub, so nothing here ever downloads:

- the NLP engine is `spacy.blank(language)`: a tokenizer only, no weights. Its tokens let Presidio's
  context enhancer see the words before a match ("ssn", "phone", a custom recognizer's context
  words); a blank pipeline has no lemmatizer, so the lowercased token stands in for the lemma.
  Presidio's `NoOpNlpEngine` would be lighter still but gives no tokens, so context words would be
  ignored.
- tldextract (the email recognizer's domain check) fetches the public suffix list on first use by
  default; our email recognizer uses an extractor bound to tldextract's bundled snapshot with no
  suffix-list URLs and no cache directory, so it never opens a socket or writes a file.
- a spaCy NER model (`nlp_model`) is used only if it is already installed as a package; a missing
  one is a configuration error, never a download.
"""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path

import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine, EntityRecognizer, Pattern, PatternRecognizer, RecognizerRegistry, RecognizerResult
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine, SlimSpacyNlpEngine, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CryptoRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UrlRecognizer,
    UsSsnRecognizer,
)
from spacy.tokens import Doc

from dlp.cards import CardRecognizer
from dlp.config import NER_ENTITIES, DlpConfig
from dlp.engine import EngineConfigError
from dlp.names import NameDataError, NameRecognizer, load_names
from dlp.phones import ShapePhoneRecognizer

# Bundled public suffix snapshot only: no URL to fetch, no cache dir to read or write.
_OFFLINE_TLD = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


_MARKS = "\u0300-\u036f"  # combining accents (`e` + U+0301), as a decomposed `é` is written
_LABEL = rf"[^\W_](?:[^\W_]|[{_MARKS}-]){{0,62}}(?<!-)"  # a domain label of any script's letters


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer with its domain check bound to the offline suffix list, and a
    local part of the characters addresses use: Presidio's also takes `/ ? = &`, so in
    `https://shop.example/?m=jane@example.com` the URL's path became part of the "address", which
    then failed its check, and the address inside the URL left untokenized.

    Letters and digits are those of any script (combining accents allowed after the first one):
    internationalized addresses (`jürgen@bücher.de`, `почта@пример.рф`) are personal data too, and
    with ASCII classes a Cyrillic look-alike (`jаne@exаmple.com`) hid an address or cut it after the
    look-alike, so its first letters left raw."""

    PATTERNS = [  # noqa: RUF012 - Presidio reads this class attribute
        Pattern(
            "Email (address characters)",
            rf"(?<![\w.%+{_MARKS}-])[^\W_][\w.%+{_MARKS}-]{{0,63}}@{_LABEL}(?:\.{_LABEL})+",
            0.5,
        )
    ]

    def validate_result(self, pattern_text: str) -> bool:
        return _OFFLINE_TLD(pattern_text).fqdn != ""


class BarePhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer without libphonenumber's reading of a bare run of more than 11
    digits starting with 1 as a US number (`1116673087387`, a millisecond timestamp of 2005):
    written without `+` or separators, a NANP number with its country code is exactly 11 digits, so
    a longer run starting with 1 is a timestamp or an id (about 1 in 300 of them was tokenized)."""

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts = None) -> list[RecognizerResult]:  # type: ignore[assignment]  # presidio's signature
        found = super().analyze(text, entities, nlp_artifacts)
        return [r for r in found if not _long_bare_nanp(text[r.start : r.end].strip())]


def _long_bare_nanp(raw: str) -> bool:
    return raw.isdigit() and raw.isascii() and len(raw) > 11 and raw.startswith("1")


class BlankSpacyNlpEngine(SlimSpacyNlpEngine):
    """A weightless spaCy tokenizer with lowercased tokens as lemmas (see the module docstring)."""

    def __init__(self, language: str) -> None:
        super().__init__(models=[{"lang_code": language, "model_name": f"blank:{language}"}], auto_download=False)
        self.language = language

    def load(self) -> None:
        self.nlp = {self.language: spacy.blank(self.language)}  # type: ignore[assignment]  # presidio declares it None

    def _doc_to_nlp_artifact(self, doc: Doc, language: str) -> NlpArtifacts:
        return NlpArtifacts(
            entities=[],
            tokens=doc,
            tokens_indices=[t.idx for t in doc],
            lemmas=[t.lower_ for t in doc],
            nlp_engine=self,
            language=language,
            scores=[],
        )


class LinearContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's context enhancer without its quadratic token search.

    Upstream finds a match's token by scanning every token of the text, and tests keyword
    membership in a list: O(findings x tokens), 5 s of a 6 s analysis on a 20 KB text with many
    findings. Same rule here (the five keywords before the match, plus the match's own token),
    found by bisection and a set.
    """

    def _extract_surrounding_words(self, nlp_artifacts: NlpArtifacts, word: str, start: int) -> list[str]:
        tokens, indices, lemmas = nlp_artifacts.tokens, nlp_artifacts.tokens_indices, nlp_artifacts.lemmas
        if not tokens:
            return [""]
        keywords = set(nlp_artifacts.keywords)
        i = max(bisect_right(indices, start) - 1, 0)
        if start >= indices[i] + len(tokens[i]) and i + 1 < len(indices):
            i += 1
        words: list[str] = []
        for step, count in ((-1, self.context_prefix_count), (1, self.context_suffix_count)):
            j, remaining = i, count + 1
            while 0 <= j < len(lemmas) and remaining > 0:
                lemma = lemmas[j].lower()
                if lemma in keywords:
                    words.append(lemma)
                    remaining -= 1
                j += step
        return list(set(words))


def _nlp_engine(config: DlpConfig) -> NlpEngine:
    if config.nlp_model is None:
        engine: NlpEngine = BlankSpacyNlpEngine(config.language)
    else:
        name = config.nlp_model
        if not (spacy.util.is_package(name) or Path(name).is_dir()):
            raise EngineConfigError(
                f"dlp.nlp_model {name!r} is not installed; install it as a package "
                f"(pip install {name}) or remove the key. The gateway never downloads models."
            )
        engine = SpacyNlpEngine(models=[{"lang_code": config.language, "model_name": name}])
    engine.load()
    return engine


def _recognizers(config: DlpConfig) -> list[EntityRecognizer]:
    lang = config.language
    found: list[EntityRecognizer] = [
        OfflineEmailRecognizer(supported_language=lang),
        # Leniency 2 (STRICT_GROUPING): digits must be grouped as the country writes them, so
        # "ORD-2019-885903" is not read as the US number 201-988-5903 (8% false positives at 1).
        BarePhoneRecognizer(supported_language=lang, supported_regions=config.phone_regions, leniency=2),
        ShapePhoneRecognizer(supported_language=lang),
        CardRecognizer(supported_language=lang),
        IbanRecognizer(supported_language=lang),
        UsSsnRecognizer(supported_language=lang),
        IpRecognizer(supported_language=lang),
        CryptoRecognizer(supported_language=lang),
        UrlRecognizer(supported_language=lang),
    ]
    if config.names:
        found.append(NameRecognizer(supported_language=lang))
    if config.nlp_model is not None:
        found.append(SpacyRecognizer(supported_language=lang, supported_entities=list(NER_ENTITIES)))
    for custom in config.custom_recognizers:
        found.append(
            PatternRecognizer(
                supported_entity=custom.entity,
                name=f"custom_{custom.entity.lower()}",
                supported_language=lang,
                patterns=[Pattern(f"{custom.entity}_{i}", p.regex, p.score) for i, p in enumerate(custom.patterns)],
                context=list(custom.context),
            )
        )
    return found


def build_analyzer(config: DlpConfig) -> AnalyzerEngine:
    """The analyzer `config` asks for (loads the spaCy pipeline; about a second on first import).

    The names data is attested here, so a gateway with a tampered copy refuses to start.
    """
    if config.names:
        try:
            load_names()
        except NameDataError as e:
            raise EngineConfigError(f"dlp.names: {e}") from None
    nlp = _nlp_engine(config)
    _OFFLINE_TLD("warm-up.example")  # builds its suffix trie now, not in the first agent's call (~0.2 s)
    registry = RecognizerRegistry(supported_languages=[config.language])
    for recognizer in _recognizers(config):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp,
        supported_languages=[config.language],
        context_aware_enhancer=LinearContextEnhancer(),
    )
