"""What the tests share besides fixtures: factories and process helpers, by concern.

Test modules import from here, never from each other or from ``conftest.py`` (which holds the
fixtures and pytest hooks only); ``test_layout.py`` holds them to that.
"""
