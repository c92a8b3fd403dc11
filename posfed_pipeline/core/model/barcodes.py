"""What a scanned barcode says, read by biip: the trade item and the figures a scale printed.

A till hands posfed whatever its scanner read:
- a GTIN-8/12/13/14 (EAN-8, UPC-A, EAN-13, ITF-14);
- a restricted-circulation number (RCN): an in-store code whose digits carry a price, a weight
  or a count by the rules of the store's GS1 region (``[store] gs1_region``), with a verifier
  digit for the measure in some regions;
- a GS1 element string from a DataBar or 2D scale label, bracketed ``(01)...(3103)000123``
  or raw with FNC1 / GS (``\\x1d``) separators, optionally with its symbology identifier;
- a GS1 Digital Link URI (``https://id.gs1.org/01/<gtin>?3103=000123``).

``read_label`` turns each into a ``Label``. biip (a maintained GS1 library with the regions'
RCN rules) does the reading; posfed only decides which reader a value goes to and what a
receipt line needs from the result. Readings are cached per (value, region): a store sells the
same codes all day, and biip takes 20-100 us per value.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from decimal import Decimal

from biip import ParseConfig, ParseError
from biip.gs1_digital_link_uris import GS1DigitalLinkURI
from biip.gs1_element_strings import GS1ElementStrings
from biip.gs1_messages import GS1Message
from biip.gtin import Gtin
from biip.rcn import Rcn, RcnRegion, RcnUsage

GTIN_LENGTHS = (8, 12, 13, 14)
SHORTEST_ELEMENT_STRING = 16  # (01) and its 14 digits
GROUP_SEPARATOR = "\x1d"  # what scanners send for FNC1 between variable-length fields
LABEL_CACHE_SIZE = 65_536
# More than any GS1 symbol holds (a GS1 DataMatrix: 2,335 characters): the central database's
# column.
MAX_SCANNED = 4000
# The regions whose RCN rules biip knows, by ISO 3166 code and by English name.
GS1_REGIONS: dict[str, str] = {
    **{region.value: region.value for region in RcnRegion},
    **{region.name.lower().replace("_", " "): region.value for region in RcnRegion},
    "uk": RcnRegion.GREAT_BRITAIN.value,
    "united kingdom": RcnRegion.GREAT_BRITAIN.value,
}
# Printable ASCII, plus the group separator element strings use.
_SCANNABLE = re.compile(r"[\x21-\x7e\x1d]+\Z")
_CENTS = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class Label:
    """One scanned value, read. Figures are None where the barcode carries none."""

    scanned: str
    form: str  # "GTIN-13", "RCN-13", "GS1 element string", "GS1 Digital Link URI", ...
    gtin: str | None = None  # the trade item as GTIN-14; an RCN's variable measure zeroed
    weight: Decimal | None = None  # net weight in kg: AI 310n, or a weight RCN
    count: int | None = None  # AI 30, or a count RCN
    amount: Decimal | None = None  # amount payable: AI 392n, or a price RCN
    unit_price: Decimal | None = None  # AI 8005, price per kg (or per piece)
    error: str | None = None  # why it is not a barcode a till can sell

    @property
    def carries_figures(self) -> bool:
        return self.amount is not None or self.weight is not None


def region_code(name: str) -> str | None:
    """The biip region for a ``gs1_region`` setting (code or name, any case), else None."""
    return GS1_REGIONS.get(name.strip().lower())


@functools.lru_cache(maxsize=LABEL_CACHE_SIZE)
def read_label(scanned: str, region: str | None = None) -> Label:
    """Read one scanned value by the rules of ``region`` (a biip region code, or None)."""
    if not scanned:
        return Label(scanned, "empty", error="the barcode is empty")
    if len(scanned) > MAX_SCANNED:
        return Label(
            scanned[:40], "text", error=f"longer than any GS1 barcode holds ({MAX_SCANNED})"
        )
    if not _SCANNABLE.match(scanned):
        return Label(
            scanned,
            "text",
            error="contains a space, a control character or a character no barcode encodes",
        )
    config = ParseConfig(rcn_region=region)
    try:
        if scanned.isdigit() and len(scanned) in GTIN_LENGTHS:
            return _from_gtin(scanned, Gtin.parse(scanned, config=config))
        if scanned.isdigit() and len(scanned) < SHORTEST_ELEMENT_STRING:
            return Label(
                scanned,
                "digits",
                error=f"a GTIN has 8, 12, 13 or 14 digits, not {len(scanned)}",
            )
        if scanned.startswith(("http://", "https://")):
            link = GS1DigitalLinkURI.parse(scanned, config=config)
            return _from_element_strings(scanned, "GS1 Digital Link URI", link.element_strings)
        if scanned.startswith("("):
            message = GS1Message.parse_hri(scanned, config=config)
        elif scanned.startswith("]") or scanned.isdigit() or GROUP_SEPARATOR in scanned:
            message = GS1Message.parse(_without_symbology(scanned), config=config)
        else:
            return Label(
                scanned,
                "text",
                error="neither a GTIN (8, 12, 13 or 14 digits), a GS1 element string nor a "
                "GS1 Digital Link URI",
            )
    except ParseError as exc:
        return Label(scanned, "unreadable", error=_reason(exc))
    return _from_element_strings(scanned, "GS1 element string", message.element_strings)


def _without_symbology(scanned: str) -> str:
    """``]C1``, ``]e0``, ``]Q3``, ``]d2``: the symbology identifier a scanner may prefix."""
    return scanned[3:] if scanned.startswith("]") else scanned


def _from_gtin(scanned: str, gtin: Gtin) -> Label:
    form = gtin.format.name.replace("_", "-")
    if not isinstance(gtin, Rcn):
        return Label(scanned, form, gtin=gtin.as_gtin_14())
    form = form.replace("GTIN", "RCN")
    item: Gtin = gtin
    if gtin.usage == RcnUsage.GEOGRAPHICAL and gtin.region is not None:
        # The measure varies per label; the item is what the product master knows.
        item = gtin.without_variable_measure()
    return Label(
        scanned,
        form,
        gtin=item.as_gtin_14(),
        weight=gtin.weight,
        count=gtin.count,
        amount=gtin.price,
    )


def _from_element_strings(scanned: str, form: str, elements: GS1ElementStrings) -> Label:
    by_ai = {element.ai.ai: element for element in elements}
    item = by_ai.get("01")
    if item is not None and item.gtin is None and item.gtin_error:
        return Label(scanned, form, error=_reason(ParseError(item.gtin_error)))
    if item is None or item.gtin is None:
        return Label(scanned, form, error="carries no GTIN (AI 01): it names no trade item")
    gtin = item.gtin
    label = _from_gtin(scanned, gtin)
    weight, amount = label.weight, label.amount
    count = label.count
    unit_price = None
    for ai, element in by_ai.items():
        if ai.startswith(("310", "392")):
            # The AI's last digit places the decimal point. Not element.decimal: biip 5.2 reads
            # a value shorter than its decimals wrongly ((3922)5 as 0.5, not 0.05).
            figure = Decimal(int(element.value)).scaleb(-int(ai[3]))
            if ai.startswith("310"):
                weight = figure
            else:
                amount = figure
        elif ai == "30":
            count = int(element.value)
        elif ai == "8005":
            # Six digits; GS1 leaves the decimal point to trading partners. Scales print cents.
            unit_price = Decimal(int(element.value)) * _CENTS
    return Label(
        scanned,
        form,
        gtin=label.gtin,
        weight=weight,
        count=count,
        amount=amount,
        unit_price=unit_price,
    )


_GTIN_CHECK = re.compile(r"Invalid GTIN check digit for '[^']*': Expected (\d+), got (\d+)")
_MEASURE_CHECK = re.compile(
    r"Invalid check digit for variable measure value '(\d+)' in RCN '[^']*': "
    r"Expected (\d+), got (\d+)"
)


def _reason(exc: ParseError) -> str:
    """biip's reason, with the two a cashier's supervisor meets most put plainly."""
    text = str(exc).rstrip(".")
    if match := _GTIN_CHECK.search(text):
        return f"check digit {match[2]}, expected {match[1]}"
    if match := _MEASURE_CHECK.search(text):
        return (
            f"the verifier digit of the price/weight {match[1]} is {match[3]}, expected {match[2]}"
        )
    return text


def gtin13(scanned: str, gtin: str | None = None) -> str | None:
    """The code in the 13 digits a legacy EAN field holds: a scanned GTIN-8/12/13 or RCN in
    its 13-digit form (an RCN with its price or weight), else the GTIN the label names when
    its indicator digit is 0. ``gtin``: the label's, if already read."""
    if scanned.isdigit() and len(scanned) <= 13:
        return scanned.rjust(13, "0")
    if gtin is None:
        gtin = read_label(scanned).gtin
    if gtin is not None and gtin.startswith("0"):
        return gtin[1:]
    return None
