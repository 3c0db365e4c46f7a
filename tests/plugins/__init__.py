"""Test plugins: fixtures shared by the test tiers, registered in ``tests/conftest.py``.

Test modules get what they share through these fixtures and never import each other (checked
by ``tests/unit/test_test_layout.py``); they may import the plugins' types for annotations.
"""
