"""The ``openai`` judge backend: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI,
llama.cpp's server, ``transformers serve``) through the official ``openai`` client.

Each judgment is one request: [system, user] messages, temperature 0, ``max_tokens`` =
``judge.max_new_tokens``; at most ``judge.max_concurrency`` in flight. The client retries a request
that failed transiently (connection errors, timeouts, 408, 409, 429, 5xx) ``judge.max_retries``
times with exponential backoff; what still fails, and every refusal (a wrong key, an unknown
model), is a UserError naming the endpoint's host, the model and the fix.

The API key comes from the environment variable ``judge.api_key_env`` and goes to the client only:
it is in no file, record, log line or error message (messages from the server are scrubbed of it).
An endpoint on this machine (a loopback address) gets the placeholder key "EMPTY" when the variable
is unset, as vLLM's documentation does: local servers ignore it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pefteval.config import JudgeConfig
from pefteval.errors import UserError
from pefteval.judging.identity import endpoint_host, is_loopback
from pefteval.judging.prompts import JudgeRequest

PLACEHOLDER_KEY = "EMPTY"


def api_key(judge: JudgeConfig, host: str) -> str:
    """The key from ``judge.api_key_env``; "EMPTY" for a loopback endpoint when it is unset."""
    key = os.environ.get(judge.api_key_env, "")
    if key:
        return key
    if is_loopback(host):
        return PLACEHOLDER_KEY
    raise UserError(f"the judge endpoint {host} needs an API key, and the environment variable {judge.api_key_env} "
                    f"is not set: export {judge.api_key_env}=<your key> (or name another variable with "
                    "--api-key-env / judge.api_key_env); pefteval reads the key from there only and never writes it")


class EndpointJudge:
    """A judgment generator (``grading.Generator``) sending each judgment to the endpoint."""

    def __init__(self, judge: JudgeConfig):
        from openai import OpenAI  # imported here: `pefteval judge --help` stays fast

        self.judge = judge
        self.host = endpoint_host(judge.base_url)
        self._key = api_key(judge, self.host)
        self._client = OpenAI(base_url=judge.base_url, api_key=self._key, max_retries=judge.max_retries,
                              timeout=judge.timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=judge.max_concurrency, thread_name_prefix="pefteval-judge")
        # chunks of a few requests per worker: each chunk is written when done
        self.chunk_size = 2 * judge.max_concurrency

    def close(self) -> None:
        """Stop: requests not started are cancelled, and closing the client ends those in flight (after
        a fatal error or Ctrl-C, nothing waits for them)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def __call__(self, requests: Sequence[JudgeRequest], retry: bool) -> list[str]:
        # the retry is the identical request: temperature 0 at a server with batching or another
        # GPU is not always deterministic, and a transient fault may have cut the first answer short
        futures = [self._pool.submit(self._one, r) for r in requests]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()

    def _one(self, request: JudgeRequest) -> str:
        import openai

        messages: list[Any] = [{"role": "system", "content": request.system},
                               {"role": "user", "content": request.user}]
        try:
            response = self._client.chat.completions.create(model=self.judge.model, messages=messages,
                                                            temperature=0, max_tokens=self.judge.max_new_tokens)
        except openai.APIConnectionError as err:  # APITimeoutError too
            raise UserError(self._unreachable(err)) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            raise UserError(f"the judge endpoint {self.host} refused the API key for model {self.judge.model!r} "
                            f"(HTTP {err.status_code}: {self._said(err)}): set {self.judge.api_key_env} to a key it "
                            "accepts (judge.api_key_env / --api-key-env names the variable)") from None
        except openai.NotFoundError as err:
            raise UserError(f"the judge endpoint {self.host} has no model {self.judge.model!r} (HTTP 404: "
                            f"{self._said(err)}): set judge.model (--model) to a name it serves (GET <base_url>/models "
                            "lists them), and check that base_url ends in /v1") from None
        except openai.APIStatusError as err:
            again = f" after {self.judge.max_retries} retries" if err.status_code in (408, 409, 429) or \
                err.status_code >= 500 else ""
            raise UserError(f"the judge endpoint {self.host} answered HTTP {err.status_code}{again} for model "
                            f"{self.judge.model!r}: {self._said(err)}") from None
        except openai.OpenAIError as err:
            raise UserError(f"the judge endpoint {self.host} (model {self.judge.model!r}): {type(err).__name__}: "
                            f"{self._said(err)}") from None
        if not response.choices:
            raise UserError(f"the judge endpoint {self.host} returned no choices for model {self.judge.model!r}: "
                            "it is not an OpenAI-compatible chat-completions endpoint")
        return response.choices[0].message.content or ""

    def _said(self, err: Exception, limit: int = 400) -> str:
        """The error's own words, cut short, with the key (should a server echo it) blanked out."""
        text = " ".join(str(err).split())
        if len(self._key) >= 4:
            text = text.replace(self._key, "***")
        return text[:limit] + ("..." if len(text) > limit else "")

    def _unreachable(self, err: Exception) -> str:
        cause = err.__cause__ or err.__context__
        why = f"{type(err).__name__}: {self._said(err)}" + (f" ({type(cause).__name__})" if cause else "")
        return (f"cannot reach the judge endpoint {self.host} (model {self.judge.model!r}) after "
                f"{self.judge.max_retries} retries ({why}): start the server, or set judge.base_url (--base-url) to "
                "where it listens; judgments finished so far are kept")
