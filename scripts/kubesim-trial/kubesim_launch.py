#!/usr/bin/env python3
"""Start kubesim (from its shared folder, unmodified) with the pods' addresses moved to
127.0.<BLOCK>.10 and up instead of 127.0.0.10 and up.

kubesim's kubelet always starts at 127.0.0.10, and every replica pod listens on port
5000 of its address: two kubesims on one machine (other sessions run theirs) would
hand out the same addresses and their pods would collide (EADDRINUSE, or worse, one
proxy routing to another run's replica). This wrapper changes only the first address
of the kubelet's counter, then runs kubesim's own main(). Arguments are kubesim's.

    TRIAL_POD_IP_BLOCK=61 python3 kubesim_launch.py --listen ... (as apiserver.py)
"""
import os
import sys

KUBESIM = os.environ.get(
    "KUBESIM_DIR",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "kubesim"),
)
sys.path.insert(0, KUBESIM)

import kubelet  # noqa: E402  (kubesim's module, imported from its folder)

BLOCK = int(os.environ.get("TRIAL_POD_IP_BLOCK", "0"))
_orig_init = kubelet.Kubelet.__init__


def _init(self, *args, **kwargs):
    _orig_init(self, *args, **kwargs)
    self.next_ip = BLOCK * 256 + 10


kubelet.Kubelet.__init__ = _init

import apiserver  # noqa: E402

if __name__ == "__main__":
    apiserver.main()
