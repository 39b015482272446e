"""The embedded broker of the example project: kombu's filesystem transport, made safe.

kombu's filesystem transport creates a message file and then writes into it,
while a consumer may already move and read it: a message read empty is lost.
Here a message is written under a name no consumer looks at, then renamed
into the queue (an atomic step on POSIX filesystems). Registered as the
``fdrfs://`` transport when the example project's settings are loaded.
"""

import os
import uuid

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps
from kombu.utils.objects import cached_property


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{round(filesystem.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".partial-{uuid.uuid4()}")
        with open(partial, "wb") as f:
            f.write(str_to_bytes(dumps(payload)))
        os.rename(partial, final)

    @cached_property
    def control_folder(self):
        folder = super().control_folder
        folder.mkdir(parents=True, exist_ok=True)
        return folder


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES["fdrfs"] = "testcelery.broker:Transport"
