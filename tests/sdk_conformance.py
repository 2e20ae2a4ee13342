"""Drive ringfs-emulator with the official RingCentral Python SDK (PyPI `ringcentral`), unchanged.

Settings come from the environment as in the SDK's samples (RC_SERVER_URL, RC_CLIENT_ID,
RC_CLIENT_SECRET, RC_JWT). Logs in with the JWT grant, pages through the user's call log by
following navigation.nextPage, downloads recording 44444444 from its contentUri into argv[1],
and prints a JSON summary on stdout for tests/sdk_conformance.rs to check.
"""
import json
import os
import sys

from ringcentral import SDK

sdk = SDK(os.environ["RC_CLIENT_ID"], os.environ["RC_CLIENT_SECRET"], os.environ["RC_SERVER_URL"])
platform = sdk.platform()
platform.login(jwt=os.environ["RC_JWT"])

records = []
pages = 0
response = platform.get(
    "/restapi/v1.0/account/~/extension/~/call-log",
    {
        "dateFrom": "2000-01-01T00:00:00.000Z",
        "dateTo": "2100-01-01T00:00:00.000Z",
        "recordingType": "All",
        "perPage": 10,
    },
)
while True:
    pages += 1
    body = response.json_dict()
    records.extend(body["records"])
    next_page = body.get("navigation", {}).get("nextPage")
    if not next_page:
        break
    response = platform.get(next_page["uri"])

seed = next(r for r in records if r["recording"]["id"] == "44444444")
content = platform.get(seed["recording"]["contentUri"])
with open(sys.argv[1], "wb") as f:
    f.write(content.body())

print(
    json.dumps(
        {
            "pages": pages,
            "ids": [r["id"] for r in records],
            "recording_ids": [r["recording"]["id"] for r in records],
            "content_type": content.response().headers["Content-Type"],
            "session": seed["sessionId"],
        }
    )
)
