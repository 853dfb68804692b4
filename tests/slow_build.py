"""Run a build with a slow fake encoder, for tests that kill or race builds: slow_build.py PATH INDEX SECONDS_PER_BATCH."""

import sys
import time

from fakes import FakeEncoder  # found beside this script, which Python puts first on the path

from search.indexing.build import build_index


class SlowEncoder(FakeEncoder):
    def embed_passages(self, texts, progress=None):
        out = []
        for t in texts:
            time.sleep(float(sys.argv[3]))
            out.append(super().embed_passages([t]))
        import numpy as np

        return np.vstack(out)


print("started", flush=True)
build_index([sys.argv[1]], sys.argv[2], SlowEncoder())
print("done", flush=True)
