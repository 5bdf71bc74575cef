"""Spoken prompts on request: every screen said aloud with espeak-ng (Debian package espeak-ng).

Voices: `cmn` (Mandarin Chinese) for zh_CN and `en-us` for English (kiosk.screen.words
SPEECH_VOICE). Speech starts when the person touches the speech button and stops when the
session returns to idle (kiosk.session resets it for the next person). A new screen cuts off the
sentence still being said. `wav_dir` writes each utterance to a numbered WAV file instead of
the sound card (tests, a box without audio).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from pathlib import Path

from kiosk.screen.render import render
from kiosk.screen.words import SPEECH_VOICE, Words
from kiosk.session import Snapshot

log = logging.getLogger(__name__)

ESPEAK = "espeak-ng"


class Speaker:
    """Listens to a screen session (`ScreenSession.subscribe(speaker)`) and speaks."""

    def __init__(self, words: Words, *, wav_dir: Path | None = None, rate: int = 150) -> None:
        self.words = words
        self.wav_dir = wav_dir
        self.rate = rate
        self.binary = shutil.which(ESPEAK)
        self.spoken: list[tuple[str, str]] = []  # (voice, text) said, for tests and the log
        self._said: tuple[int, str, str] | None = None  # (screen's seq, language, text)
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def __call__(self, snapshot: Snapshot) -> None:
        if not snapshot.speech:
            self.stop()
            self._said = None
            return
        text = render(snapshot, self.words)["say"]
        key = (snapshot.seq, snapshot.language, text)
        if not text or (self._said and self._said[1:] == key[1:]):
            return  # the same words again (a timer tick): not said twice
        self._said = key
        self.say(snapshot.language, text)

    def say(self, language: str, text: str) -> None:
        voice = SPEECH_VOICE[self.words.language(language)]
        with self._lock:
            self._stop_locked()
            self.spoken.append((voice, text))
            if self.binary is None:
                log.warning("speech asked for, but %s is not installed", ESPEAK)
                return
            command = [self.binary, "-v", voice, "-s", str(self.rate)]
            if self.wav_dir is not None:
                self.wav_dir.mkdir(parents=True, exist_ok=True)
                command += ["-w", str(self.wav_dir / f"{len(self.spoken):04d}-{voice}.wav")]
            command += ["--", text]
            self._process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def wait(self, timeout: float = 10.0) -> None:
        """Until the current utterance has been said (tests)."""
        process = self._process
        if process is not None:
            process.wait(timeout)

    def _stop_locked(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(2)
