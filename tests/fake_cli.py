"""The review-search CLI with the fake encoder registered, for tests that need a real process
(resource limits, signals): fake_cli.py ARGS... (pass --model fake/trigram-64 to build with it)."""

from fakes import FakeEncoder  # found beside this script, which Python puts first on the path

from search.cli import app
from search.model.encoders import register_encoder

register_encoder(FakeEncoder.model_id, FakeEncoder)
app(prog_name="review-search")
