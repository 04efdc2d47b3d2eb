// A webhook receiver for the end-to-end tests. Every POST is verified with the npm package
// `standardwebhooks` (an implementation of the Standard Webhooks specification) and
// reported as one JSON line on stdout: {"ok":true,"id":...,"type":...,"data":...} for a
// verified delivery (answered 204), {"ok":false,"error":...} otherwise (answered 400).
//
//   WEBHOOK_SECRET=whsec_... node receiver.mjs PORT
//
// Prints {"listening":PORT} once it accepts connections.
import http from "node:http";
import { Webhook } from "standardwebhooks";

const port = Number(process.argv[2] ?? 0);
const hook = new Webhook(process.env.WEBHOOK_SECRET);

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    try {
      const headers = {
        "webhook-id": req.headers["webhook-id"],
        "webhook-timestamp": req.headers["webhook-timestamp"],
        "webhook-signature": req.headers["webhook-signature"],
      };
      const payload = hook.verify(body, headers);
      console.log(
        JSON.stringify({
          ok: true,
          id: headers["webhook-id"],
          type: payload.type,
          data: payload.data,
          content_type: req.headers["content-type"],
          path: req.url,
          raw: body,
        }),
      );
      res.writeHead(204).end();
    } catch (e) {
      console.log(JSON.stringify({ ok: false, error: String(e), raw: body }));
      res.writeHead(400).end();
    }
  });
});

server.listen(port, "127.0.0.1", () => {
  console.log(JSON.stringify({ listening: server.address().port }));
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
