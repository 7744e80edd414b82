"""Container healthcheck: exit 0 if the URL (default /healthz on 9180) answers 200.

The slim runtime image has no curl; Python is there anyway.
"""

import sys
import urllib.request

url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:9180/healthz"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError:
    sys.exit(1)
