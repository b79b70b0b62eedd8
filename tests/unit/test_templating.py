"""Payload templates: what a send puts in front of a destination, rendered from the run's values."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.templating import DataTemplate, TemplateProblem, check, render

VALUES = {
    "profile": {"email": "ann@example.com", "first_name": "Ann"},
    "event": {"properties": {"items": [{"sku": "A1", "qty": 2}], "value": 42.5, "url": "https://s/c/1"}},
    "run": {"key": "cart-1"},
}


def test_one_expression_keeps_its_type_and_text_renders_as_text() -> None:
    payload = DataTemplate(
        {
            "cartItems": "{{ event.properties.items }}",
            "cartValue": " {{ event.properties.value }} ",
            "count": "{{ event.properties.items | length }}",
            "subject": "Still thinking it over, {{ profile.first_name }}?",
            "plain": "no braces here",
            "number": 3,
            "nested": {"ref": "{{ run.key }}", "tags": ["cart", "{{ profile.email }}", None]},
        }
    ).render(VALUES)
    assert payload == {
        "cartItems": [{"sku": "A1", "qty": 2}],
        "cartValue": 42.5,
        "count": 1,
        "subject": "Still thinking it over, Ann?",
        "plain": "no braces here",
        "number": 3,
        "nested": {"ref": "cart-1", "tags": ["cart", "ann@example.com", None]},
    }
    assert list(payload) == ["cartItems", "cartValue", "count", "subject", "plain", "number", "nested"]


def test_each_firing_gets_its_own_values() -> None:
    template = DataTemplate({"to": "{{ profile.email }}", "ref": "{{ run.key }}"})
    first = template.render(VALUES)
    second = template.render({**VALUES, "profile": {"email": "bob@example.com"}, "run": {"key": "cart-2"}})
    assert first == {"to": "ann@example.com", "ref": "cart-1"}
    assert second == {"to": "bob@example.com", "ref": "cart-2"}


def test_a_rendered_payload_is_the_callers_to_change() -> None:
    template = DataTemplate({"event": "Cart Reminder", "properties": {"tags": ["cart"]}})
    first = template.render(VALUES)
    first["email"] = "ann@example.com"  # what a send adds to its payload
    first["properties"]["tags"].append("vip")
    assert template.render(VALUES) == {"event": "Cart Reminder", "properties": {"tags": ["cart"]}}


@pytest.mark.parametrize(
    ("data", "missing"),
    [
        ({"v": "{{ profile.last_name }}"}, "last_name"),  # a missing key is an error, never a blank
        ({"v": "{{ coupon }}"}, "coupon"),
        ({"v": "Hi {{ profile.nickname }}"}, "nickname"),
        ({"ok": "{{ profile.email }}", "v": "{{ coupon.code }}"}, "coupon"),
    ],
)
def test_a_value_the_template_needs_but_lacks_is_a_problem(data: dict[str, str], missing: str) -> None:
    with pytest.raises(TemplateProblem, match=missing):
        DataTemplate(data).render(VALUES)


@pytest.mark.parametrize("text", ["{{ profile.email ", "{{ a b }}", "{{ ) }}", "{% if %}x"])
def test_a_malformed_template_is_refused_when_compiled(text: str) -> None:
    with pytest.raises(TemplateProblem):
        check(text)
    with pytest.raises(TemplateProblem):
        DataTemplate({"nested": [text]})


def test_the_sandbox_keeps_templates_away_from_python_internals() -> None:
    with pytest.raises(TemplateProblem):
        DataTemplate({"v": "{{ profile.email.__class__.__mro__ }}"}).render(VALUES)


def test_dict_keys_are_keys_not_methods_and_html_is_escaped() -> None:
    values = {"cart": {"items": ["<b>x</b>"], "keys": "k"}}
    assert DataTemplate({"v": "{{ cart.items }}", "k": "{{ cart.keys }}"}).render(values) == {
        "v": ["<b>x</b>"],
        "k": "k",
    }
    assert render("<p>{{ cart.items[0] }}</p>", values, html=True) == "<p>&lt;b&gt;x&lt;/b&gt;</p>"


def jinja_only(data: dict[str, Any]) -> DataTemplate:
    template = DataTemplate(data)
    template._paths = None  # every value through the Jinja program
    return template


LOOKUPS = {
    "to": "{{ profile.email }}",
    "items": "{{ event.properties.items }}",
    "first": "{{ event['properties'].items }}",
    "ref": "{{ run.key }}",
    "everything": "{{ event }}",
}


def test_plain_lookups_are_read_without_jinja_and_give_what_jinja_gives() -> None:
    template = DataTemplate(LOOKUPS)
    template._program = None  # were the lookups not read directly, there would be no results
    assert template.render(VALUES) == jinja_only(LOOKUPS).render(VALUES)
    assert template.render(VALUES)["items"] is VALUES["event"]["properties"]["items"]  # type kept


@given(
    st.dictionaries(
        st.sampled_from(["profile", "event", "run", "range"]),
        st.recursive(
            st.none() | st.integers() | st.text(max_size=3),
            lambda inner: (
                st.lists(inner, max_size=2)
                | st.dictionaries(st.sampled_from(["email", "properties", "items", "key", "keys"]), inner)
            ),
            max_leaves=8,
        ),
    )
)
def test_any_values_render_as_jinja_renders_them(values: dict[str, Any]) -> None:
    data = {**LOOKUPS, "global": "{{ range }}", "method": "{{ run.keys }}"}

    def outcome(template: DataTemplate) -> object:
        try:
            return repr(template.render(values))
        except TemplateProblem as exc:
            return ("problem", str(exc))

    assert outcome(DataTemplate(data)) == outcome(jinja_only(data))
