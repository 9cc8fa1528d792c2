"""The rule language's types, checked when a rule file loads (never at run time)."""

from __future__ import annotations

from dataclasses import dataclass, field

FHIR_ID_LENGTH = 64  # FHIR ids are at most 64 characters


@dataclass(frozen=True, slots=True)
class Scalar:
    """bool, number, date or string; ``width`` bounds a string's rendered length (None: unknown).

    ``words``: (code, Danish, English) for a string whose values are codes a reader should see
    in words (sex: 'female' is 'kvinde' on a Danish card); it compares as any string.
    ``values``: the only codes such a string can hold, so a comparison with any other text (a
    rule that says ``sex = 'kvinde'``) is refused at load rather than silently never true."""

    kind: str
    width: int | None = field(default=None, compare=False)
    words: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)
    values: tuple[str, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True, slots=True)
class Quantity:
    """A number in a unit; quantities of different units never compare."""

    unit: str

    def __str__(self) -> str:
        return f"quantity in {self.unit}"


@dataclass(frozen=True, slots=True)
class Record:
    """A fact with fields (an observation, a target); absent when the patient has no data."""

    name: str
    fields: tuple[tuple[str, Type], ...]

    def field_type(self, name: str) -> Type | None:
        return next((t for n, t in self.fields if n == name), None)

    def __str__(self) -> str:
        return self.name


Type = Scalar | Quantity | Record

BOOL = Scalar("bool")
NUMBER = Scalar("number")
DATE = Scalar("date")
STRING = Scalar("string")
SEX = Scalar(
    "string",
    width=len("unknown"),
    words=(
        ("male", "mand", "male"),
        ("female", "kvinde", "female"),
        ("other", "andet", "other"),
        ("unknown", "ukendt", "unknown"),
    ),
    values=("male", "female", "other", "unknown"),
)  # FHIR administrative gender
RESOURCE = Scalar("string", width=len("MedicationStatement/") + FHIR_ID_LENGTH)
# The type of a fact or target whose own definition has an error: it stays a known name, and an
# expression that uses it is not reported again (one mistake, one message).
UNUSABLE = Scalar("unusable")
TARGET_SOURCE = Scalar("string", width=len("default"), values=("goal", "case", "default"))


def observation(unit: str | None) -> Record:
    """Type of latest/earliest observation facts; a value without unit is a plain number."""
    value: Type = Quantity(unit) if unit else NUMBER
    return Record("observation", (("value", value), ("date", DATE), ("resource", RESOURCE)))


def target(unit: str | None, reason_width: int) -> Record:
    """Type of an individual target: its value, why it applies, and where it came from."""
    value: Type = Quantity(unit) if unit else NUMBER
    reason = Scalar("string", width=reason_width)
    return Record("target", (("value", value), ("reason", reason), ("source", TARGET_SOURCE)))
