#!/usr/bin/env python3
"""A plugin that never answers Fetch: the gateway must kill it after call_timeout_seconds."""

import threading

import authgate_plugin
from authgate_plugin import Capabilities, Plugin


class HangPlugin(Plugin):
    kind = "hang"
    version = "1.0.0"
    capabilities = Capabilities()

    def fetch(self, ctx, settings, scopes, refresh_token):
        threading.Event().wait()  # forever


if __name__ == "__main__":
    authgate_plugin.serve(HangPlugin())
