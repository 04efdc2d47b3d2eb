#!/usr/bin/env python3
"""A plugin that builds its provider's address from settings that are no URL (`host`,
`port`), so only the gateway's egress check on Host.Send can stop it reaching a private
address."""

import authgate_plugin
from authgate_plugin import Capabilities, Context, Plugin, parse_oauth_token


class WanderPlugin(Plugin):
    kind = "wander"
    version = "1.0.0"
    capabilities = Capabilities()

    def fetch(self, ctx: Context, settings, scopes, refresh_token):
        url = f"http://{settings['host']}:{settings['port']}/token"
        response = ctx.send("token", "POST", url, form={"grant_type": "client_credentials"})
        return parse_oauth_token("token", response)


if __name__ == "__main__":
    authgate_plugin.serve(WanderPlugin())
