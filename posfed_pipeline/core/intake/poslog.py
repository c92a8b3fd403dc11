"""ARTS / NRF POSLog (IXRetail XML): one file, many transactions, each its own receipt.

What is read, per ``Transaction`` (element names of the POSLog schema, IXRetail namespace):

    WorkstationID                  -> the till (must be this terminal's)
    SequenceNumber                 -> receiptId
    EndDateTime                    -> timestamp
    RetailTransaction/LineItem/Sale (or Return: a negative quantity)
        ItemID (or POSIdentity/POSItemID) -> barcode
        Description                -> description
        RegularSalesUnitPrice      -> price
        Quantity                   -> quantity
        ExtendedAmount             -> must equal price x quantity (half-up to cents)
    RetailTransaction/Total[@TotalType="TransactionGrandAmount"] -> total

A transaction that is not a sale (no ``RetailTransaction``: sign-on, till control) or was
voided, cancelled or suspended is skipped. A voided line (``VoidFlag="true"``) is skipped. Lines
that carry no goods (tender, tax, loyalty membership...) are passed over. A discount, coupon or
loyalty reward changes what was paid in a way the canonical receipt cannot hold: that
transaction is rejected with the reason. (Any other line that changed the amount would make the
total disagree with the lines, which validation rejects.)

The XML is parsed by defusedxml: no DTDs, no entities, nothing fetched.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.core.model.receipt import Problem, Receipt, round_cents

IXRETAIL_NAMESPACE = "http://www.nrf-arts.org/IXRetail/namespace/"
MAX_TRANSACTIONS = 10_000
MAX_FILE_BYTES = 64_000_000  # an end-of-day file of a busy till
# A POSLog sale is about ten elements deep; far deeper is no sale, and would exhaust the
# recursion of whatever walks the tree afterwards.
MAX_DEPTH = 64
GRAND_TOTAL = "TransactionGrandAmount"
SKIPPED_STATUSES = {"voided", "canceled", "cancelled", "suspended"}
GOODS_LINES = ("Sale", "Return")
# Lines that change what the customer paid beyond price x quantity.
PRICE_CHANGING_LINES = {"Discount", "Coupon", "LoyaltyReward", "PriceModifier", "Rebate"}

ET.register_namespace("", IXRETAIL_NAMESPACE)  # a transaction on its own keeps the plain names


class PosLogError(PosfedError, ValueError):
    def __init__(self, problems: list[Problem], *, maybe_incomplete: bool = False):
        self.problems = problems
        self.maybe_incomplete = maybe_incomplete
        super().__init__("; ".join(str(p) for p in problems))


@dataclass
class Transaction:
    """One transaction's canonical fields, read but not yet checked (``core.intake`` does)."""

    index: int  # 1-based position in the file
    sequence_number: str | None
    document: bytes  # a POSLog file holding this transaction alone
    values: dict[str, object] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    items: list[tuple[dict[str, object], dict[str, str]]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def name(self) -> str:
        number = f" (SequenceNumber {self.sequence_number})" if self.sequence_number else ""
        return f"transaction {self.index}{number}"


class _TooDeep(PosfedError):
    pass


class _DepthLimitedBuilder(ET.TreeBuilder):
    """Builds the tree, refusing it as soon as it gets deeper than ``MAX_DEPTH``."""

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0

    def start(self, tag, attrs):
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _TooDeep
        return super().start(tag, attrs)

    def end(self, tag):
        self._depth -= 1
        return super().end(tag)


def _parse(data: bytes) -> ET.Element:
    # defusedxml: no entity expansion, nothing fetched; and no DTD at all (forbid_dtd), as the
    # vendors' guide promises: a file with one is refused whole.
    parser = DefusedXMLParser(target=_DepthLimitedBuilder(), forbid_dtd=True)
    parser.feed(data)
    return parser.close()


def read_poslog(data: bytes) -> list[Transaction]:
    """The file's sales (transactions that are not sales are passed over)."""
    try:
        root = _parse(data)
    except _TooDeep:
        raise PosLogError(
            [Problem("file", f"more than {MAX_DEPTH} levels", "XML nested too deeply")]
        ) from None
    except ET.ParseError as exc:
        line, column = exc.position
        raise PosLogError(
            [Problem("file", f"line {line} column {column}", f"not well-formed XML: {exc}")],
            maybe_incomplete=True,
        ) from None
    except DefusedXmlException as exc:
        raise PosLogError(
            [Problem("file", type(exc).__name__, "XML with a DTD or entities is refused")]
        ) from None
    namespace, local = _split(root.tag)
    if namespace not in (IXRETAIL_NAMESPACE, "") or local not in ("POSLog", "Transaction"):
        raise PosLogError(
            [
                Problem(
                    "file",
                    root.tag[:80],
                    f"not an ARTS POSLog document (expected POSLog in {IXRETAIL_NAMESPACE})",
                )
            ]
        )
    ns = namespace
    elements = [root] if local == "Transaction" else root.findall(_q(ns, "Transaction"))
    if len(elements) > MAX_TRANSACTIONS:
        raise PosLogError(
            [Problem("file", str(len(elements)), f"more than {MAX_TRANSACTIONS} transactions")]
        )
    transactions: list[Transaction] = []
    skipped = 0
    for index, element in enumerate(elements, start=1):
        retail = element.find(_q(ns, "RetailTransaction"))
        if retail is None or _skipped(element, retail):
            skipped += 1
            continue
        transactions.append(_transaction(index, element, retail, ns))
    if not transactions:
        raise PosLogError(
            [
                Problem(
                    "file",
                    f"{len(elements)} transactions, {skipped} not sales",
                    "holds no sale (RetailTransaction) to read",
                )
            ]
        )
    return transactions


def _once(count: int, label: str, problems: list[Problem]) -> None:
    if count > 1:
        problems.append(
            Problem(label, f"{count} elements", "must appear once (which is meant cannot be told)")
        )


def _skipped(transaction: ET.Element, retail: ET.Element) -> bool:
    if transaction.get("CancelFlag", "").lower() == "true":
        return True
    return retail.get("TransactionStatus", "").lower() in SKIPPED_STATUSES


def _transaction(index: int, element: ET.Element, retail: ET.Element, ns: str) -> Transaction:
    sequence = _text(element, ns, "SequenceNumber")
    result = Transaction(index, sequence, _alone(element, ns))
    values, labels = result.values, result.labels
    for name, path in (
        ("receiptId", "SequenceNumber"),
        ("terminalId", "WorkstationID"),
        ("timestamp", "EndDateTime"),
    ):
        values[name] = _text(element, ns, path)
        labels[name] = f"{name} ({path})"
        _once(len(element.findall(_q(ns, path))), labels[name], result.problems)
    grands = [t for t in retail.findall(_q(ns, "Total")) if t.get("TotalType") == GRAND_TOTAL]
    grand = grands[0] if grands else None
    values["total"] = grand.text.strip() if grand is not None and grand.text else None
    labels["total"] = f'total (RetailTransaction/Total[@TotalType="{GRAND_TOTAL}"])'
    _once(len(grands), labels["total"], result.problems)

    for position, line in enumerate(retail.findall(_q(ns, "LineItem")), start=1):
        if line.get("VoidFlag", "").lower() == "true":
            continue
        place = f"LineItem[{position}]"
        kinds = [_split(child.tag)[1] for child in line]
        goods = [k for k in kinds if k in GOODS_LINES]
        changing = [k for k in kinds if k in PRICE_CHANGING_LINES]
        if changing:
            result.problems.append(
                Problem(
                    place,
                    ", ".join(changing),
                    "changes what was paid in a way a posfed receipt cannot hold (its lines "
                    "are price x quantity; the till must send the sale without it)",
                )
            )
            continue
        if not goods:
            continue
        kind = goods[0]
        goods_line = line.find(_q(ns, kind))
        assert goods_line is not None  # its tag was just found among the children
        result.items.append(_line(goods_line, kind, place, ns, result.problems))
    return result


def _line(
    goods: ET.Element, kind: str, place: str, ns: str, problems: list[Problem]
) -> tuple[dict[str, object], dict[str, str]]:
    where = f"{place}/{kind}"
    item_id = _text(goods, ns, "ItemID") or _text(goods, ns, "POSIdentity/POSItemID")
    values: dict[str, object] = {
        "barcode": item_id,
        "description": _text(goods, ns, "Description") or "",
        "price": _text(goods, ns, "RegularSalesUnitPrice"),
        "quantity": _text(goods, ns, "Quantity"),
    }
    labels = {
        "barcode": f"{where}/ItemID",
        "description": f"{where}/Description",
        "price": f"{where}/RegularSalesUnitPrice",
        "quantity": f"{where}/Quantity",
    }
    if kind == "Return" and isinstance(values["quantity"], str):
        quantity = values["quantity"]
        values["quantity"] = quantity[1:] if quantity.startswith("-") else f"-{quantity}"
    extended = _text(goods, ns, "ExtendedAmount")
    if extended is not None:
        _check_extended(extended, values, f"{where}/ExtendedAmount", problems)
    return values, labels


def _check_extended(
    extended: str, values: dict[str, object], where: str, problems: list[Problem]
) -> None:
    """The till's own line amount must be what posfed computes from price and quantity."""
    try:
        amount = Decimal(extended)
        price = Decimal(str(values["price"]))
        quantity = Decimal(str(values["quantity"]))
    except (InvalidOperation, ValueError):
        return  # the unreadable price or quantity is reported by intake, by name
    if not (amount.is_finite() and price.is_finite() and quantity.is_finite()):
        return
    computed = round_cents(price * quantity)
    if abs(amount) != abs(computed):
        problems.append(
            Problem(
                where,
                extended,
                f"must equal RegularSalesUnitPrice x Quantity = {price} x {abs(quantity)} = "
                f"{abs(computed)} (a price modifier or discount is not carried)",
            )
        )


def _alone(transaction: ET.Element, ns: str) -> bytes:
    """The transaction as a POSLog file of its own: what a quarantine keeps and a retry reads."""
    root = ET.Element(_q(ns, "POSLog"))
    root.text = "\n"
    tail, transaction.tail = transaction.tail, "\n"
    root.append(transaction)
    document = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    transaction.tail = tail
    return document + b"\n"


def _text(element: ET.Element, ns: str, path: str) -> str | None:
    found = element.find("/".join(_q(ns, step) for step in path.split("/")))
    if found is None or found.text is None or not found.text.strip():
        return None
    return found.text.strip()


def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}" if ns else name


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


def write_poslog(receipts: list[Receipt], workstation_id: str) -> bytes:
    """Receipts as one POSLog file, as a till exports them (the simulator's POSLog tills)."""
    ns = IXRETAIL_NAMESPACE
    root = ET.Element(_q(ns, "POSLog"))
    for receipt in receipts:
        transaction = ET.SubElement(root, _q(ns, "Transaction"))
        for name, value in (
            ("WorkstationID", workstation_id),
            ("SequenceNumber", receipt.receipt_id),
            ("BusinessDayDate", receipt.business_day.isoformat()),
            ("EndDateTime", receipt.timestamp.isoformat()),
        ):
            ET.SubElement(transaction, _q(ns, name)).text = value
        retail = ET.SubElement(transaction, _q(ns, "RetailTransaction"))
        for number, item in enumerate(receipt.items, start=1):
            line = ET.SubElement(retail, _q(ns, "LineItem"))
            ET.SubElement(line, _q(ns, "SequenceNumber")).text = str(number)
            kind = "Return" if item.quantity < 0 else "Sale"
            goods = ET.SubElement(line, _q(ns, kind))
            for name, value in (
                ("ItemID", item.barcode),
                ("Description", item.description),
                ("RegularSalesUnitPrice", str(item.price)),
                ("ExtendedAmount", str(abs(item.amount))),
                ("Quantity", str(abs(item.quantity))),
            ):
                ET.SubElement(goods, _q(ns, name)).text = value
        total = ET.SubElement(retail, _q(ns, "Total"), TotalType=GRAND_TOTAL)
        total.text = str(receipt.total)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
