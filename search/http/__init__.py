"""The ways in over HTTP: the JSON API and its server (`server`), the search
page (`pages`, `templates/`, `static/`), and the parameter parsing and error
answers both share (`params`)."""
