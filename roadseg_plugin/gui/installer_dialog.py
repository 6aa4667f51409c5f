"""The package installer: installs a package set into RoadSeg's folder of the QGIS profile.

Opened from the message bar's "Install packages..." button or Plugins > RoadSeg > Install
packages... It lists what is missing and the download size of the two sets (`packages.CPU`,
`packages.TRAINING`), runs pip in a QProcess (QGIS stays usable; the log pane shows pip's
output live; Cancel kills it), then re-checks: a fresh interpreter must import every module of
the set, and this QGIS must load them too, or the user is told to restart QGIS. The Details
pane has the same commands to copy for a terminal (the manual route).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from qgis.PyQt.QtCore import QProcess, QProcessEnvironment, pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase, QGuiApplication
from qgis.PyQt.QtWidgets import (
    QButtonGroup,
    QDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from ..install import deps, packages

TITLE = "RoadSeg: install Python packages"


class InstallerDialog(QDialog):
    """Non-modal installer window.

    Args:
        parent: the QGIS main window.
        profile: the QGIS profile folder (default: the running QGIS's); the packages go to
            `packages.packages_dir(profile)` unless `target` is given.
        python: the interpreter whose pip runs (default: this QGIS's Python).

    Signals:
        installed(bool): after a successful installation; True when this QGIS loaded every
            package (Segment roads works now), False when QGIS must be restarted first.
    """

    installed = pyqtSignal(bool)

    def __init__(self, parent: QWidget | None = None, profile: str | os.PathLike | None = None,
                 python: str | None = None, target: str | os.PathLike | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(TITLE)
        self.setObjectName("RoadSegInstaller")
        self.python = python or packages.python_executable()
        self.target = Path(target) if target else packages.packages_dir(profile)
        self.driver = packages.nvidia_driver()
        self.numpy = deps.qgis_numpy(self.python, self.target)
        self.process: QProcess | None = None
        self.steps: list[tuple[str, list[str]]] = []
        self.step_count = 0
        self.collected = 0
        self.cancelled = False
        self.outcome = ""  # "", "ready", "restart", "failed", "cancelled"
        self.missing: dict[str, list[packages.Package]] = {}
        self._build()
        self.refresh()

    # ---------------------------------------------------------------- layout
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        self.intro = QLabel(wordWrap=True)
        layout.addWidget(self.intro)
        heading = QLabel("<b>What to install</b>")
        layout.addWidget(heading)
        box_layout = layout
        self.choice = QButtonGroup(self)
        self.radios: dict[str, QRadioButton] = {}
        self.missing_labels: dict[str, QLabel] = {}
        for package_set in packages.SETS.values():
            radio = QRadioButton(f"{package_set.title} ({package_set.size_text()})")
            radio.setObjectName(f"set_{package_set.key}")
            self.choice.addButton(radio)
            self.radios[package_set.key] = radio
            label = QLabel(wordWrap=True)
            label.setIndent(22)
            self.missing_labels[package_set.key] = label
            box_layout.addWidget(radio)
            box_layout.addWidget(label)
        self.where = QLabel(wordWrap=True)
        layout.addWidget(self.where)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.status = QLabel(wordWrap=True)
        self.status.setObjectName("status")
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.log_view = QPlainTextEdit(readOnly=True)
        self.log_view.setObjectName("log")
        self.log_view.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.log_view.setMinimumHeight(140)
        self.log_view.setMaximumBlockCount(5000)
        self.log_view.setPlaceholderText("pip's output appears here while it runs")
        layout.addWidget(self.log_view, 1)

        self.details_button = QPushButton("Details: install by hand")
        self.details_button.setCheckable(True)
        self.details = QWidget()
        details_layout = QVBoxLayout(self.details)
        details_layout.setContentsMargins(0, 0, 0, 0)
        self.manual = QLabel(wordWrap=True)
        details_layout.addWidget(self.manual)
        row = QHBoxLayout()
        self.command_view = QPlainTextEdit(readOnly=True)
        self.command_view.setObjectName("command")
        self.command_view.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.command_view.setMaximumHeight(90)
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the command to the clipboard")
        self.copy_button.clicked.connect(self.copy_command)
        row.addWidget(self.command_view, 1)
        row.addWidget(self.copy_button)
        details_layout.addLayout(row)
        self.details.setVisible(False)
        self.details_button.toggled.connect(self.details.setVisible)
        layout.addWidget(self.details_button)
        layout.addWidget(self.details)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.install_button = QPushButton("Install")
        self.install_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop pip")
        self.close_button = QPushButton("Close")
        for button in (self.install_button, self.cancel_button, self.close_button):
            buttons.addWidget(button)
        self.install_button.clicked.connect(self.start_install)
        self.cancel_button.clicked.connect(self.cancel_install)
        self.close_button.clicked.connect(self.close)
        self.cancel_button.setEnabled(False)
        layout.addLayout(buttons)
        self.radios["cpu"].setChecked(True)
        for radio in self.radios.values():
            radio.toggled.connect(self._update_command)
        self.resize(800, 720)

    # ---------------------------------------------------------------- state
    def selected(self) -> packages.PackageSet:
        return next(packages.SETS[key] for key, radio in self.radios.items() if radio.isChecked())

    def refresh(self) -> None:
        """Re-read what is missing (after an installation too) and update the texts."""
        packages.refresh(self.target)
        missing = {key: packages.missing(s) for key, s in packages.SETS.items()}
        cpu_missing = missing["cpu"]
        if cpu_missing:
            intro = ("RoadSeg needs Python packages that QGIS's Python does not have. They are installed into a "
                     "folder used only by RoadSeg, in your QGIS profile; QGIS's own Python is left as it is.")
        elif missing["training"]:
            intro = ("Every package Segment roads needs is installed. Install Training and GPU to train models or "
                     "run on an NVIDIA GPU.")
        else:
            intro = "Every package RoadSeg uses is installed: Segment roads, training and the GPU all work."
        self.intro.setText(intro)
        self.missing = missing
        torch_note = {None: "the CPU build of PyTorch"}.get(self.driver, f"a CUDA build of PyTorch (NVIDIA driver "
                                                                         f"{self.driver})")
        for key, package_set in packages.SETS.items():
            names = ", ".join(p.name for p in missing[key])
            text = f"{package_set.purpose}." + (f" Missing: {names}." if names else " All installed.")
            if key == "training":
                text += f" Installs {torch_note}."
            self.missing_labels[key].setText(text)
        if not missing["training"]:
            self.radios["training"].setChecked(True)
        elif cpu_missing:
            self.radios["cpu"].setChecked(True)
        self.where.setText(f"Python: {self.python}\nFolder: {self.target}")
        self._update_command()

    def to_install(self) -> list[packages.Package]:
        """The packages of the selected set that are not installed yet (what Install installs)."""
        return self.missing[self.selected().key]

    def commands(self) -> list[list[str]]:
        """The pip commands for what the selected set adds (also what the Details pane shows); for
        a set already installed, those that would install it all again (by hand)."""
        return packages.pip_commands(self.selected(), self.python, self.target, self.numpy, driver=self.driver,
                                     only=self.to_install() or None)

    def command_text(self) -> str:
        return packages.command_line(self.commands())

    def _update_command(self, *_args) -> None:
        if not any(radio.isChecked() for radio in self.radios.values()):
            return
        where = "the OSGeo4W Shell" if sys.platform == "win32" else "a terminal"
        again = "" if self.to_install() else f"{self.selected().title} is installed; to install it again, "
        self.manual.setText(f"{again or 'To install by hand, '}run this in {where} (QGIS may stay open), then "
                            "restart QGIS. The folder is put first on QGIS's Python path when RoadSeg loads.")
        self.command_view.setPlainText(self.command_text())
        if not self.running():
            self.install_button.setEnabled(bool(self.to_install()))
            self.install_button.setToolTip("" if self.to_install() else f"{self.selected().title} is installed")

    def copy_command(self) -> None:
        QGuiApplication.clipboard().setText(self.command_text())
        self.status.setText("Command copied to the clipboard.")

    def running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.NotRunning

    def _set_busy(self, busy: bool) -> None:
        for radio in self.radios.values():
            radio.setEnabled(not busy)
        self.install_button.setEnabled(not busy and bool(self.to_install()))
        self.cancel_button.setEnabled(busy)
        self.close_button.setEnabled(not busy)

    # ---------------------------------------------------------------- running pip
    def start_install(self) -> None:
        """Check pip (bootstrap it with ensurepip if needed), run the pip commands, then re-check."""
        if self.running():
            return
        try:
            self.target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._fail(f"cannot create {self.target} ({exc.strerror})")
            return
        self.steps = [("pip-check", [self.python, "-m", "pip", "--version"])]
        self.steps += [("pip", command) for command in self.commands()]
        self.steps.append(("check", packages.check_command(self.python, self.target, self.selected().modules)[0]))
        self.step_count, self.collected, self.cancelled, self.outcome = len(self.steps), 0, False, ""
        self.log_view.clear()
        self.progress.setValue(0)
        self._set_busy(True)
        adds = ", ".join(p.name for p in self.to_install())
        self.status.setText(f"Installing {self.selected().title}: {adds}...")
        self._next()

    def _next(self) -> None:
        kind, command = self.steps[0]
        self._output = ""
        self.process = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        if kind == "check":
            env.insert("PYTHONPATH", packages.check_command(self.python, self.target, [])[1]["PYTHONPATH"])
        env.insert("PYTHONUNBUFFERED", "1")
        env.insert("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        self.process.setProcessEnvironment(env)
        self.process.setProcessChannelMode(QProcess.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read_output)
        self.process.finished.connect(self._step_finished)
        self.process.errorOccurred.connect(self._process_error)
        if kind != "check":
            self.log_view.appendPlainText("$ " + packages.command_line([command]))
        else:
            self.status.setText("Checking that the packages import...")
        self.process.start(command[0], command[1:])

    def _read_output(self) -> None:
        text = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        self._output += text
        kind = self.steps[0][0] if self.steps else ""
        if kind == "check":
            return
        for line in text.splitlines():
            if line.strip():
                self.log_view.appendPlainText(line.rstrip())
            if line.startswith("Collecting "):
                self.collected += 1
                self.status.setText(f"Downloading: {line.split()[1]}")
            elif line.startswith("Installing collected packages"):
                self.status.setText("Installing the downloaded packages...")
        done = self.step_count - len(self.steps)
        expected = 3 * len(self.to_install() or self.selected().packages) + 2  # distributions pip collects, about
        within = min(0.95, self.collected / expected) if kind == "pip" else 0.0
        self.progress.setValue(int(100 * (done + within) / self.step_count))

    def _process_error(self, error) -> None:
        if error == QProcess.FailedToStart:
            self._fail(f"could not start {self.steps[0][1][0]}: {self.process.errorString()}")

    def _step_finished(self, code: int, _status=None) -> None:
        if not self.steps or self.outcome:
            return
        kind, _command = self.steps.pop(0)
        self.progress.setValue(int(100 * (self.step_count - len(self.steps)) / self.step_count))
        if self.cancelled:
            self._end("cancelled", "Cancelled: pip was stopped. Packages it had already moved into the folder "
                      "stay there; run Install again to complete them.")
            return
        if kind == "pip-check" and code != 0:
            self.steps.insert(0, ("ensurepip", [self.python, "-m", "ensurepip", "--upgrade", "--user"]))
            self.steps.insert(1, ("pip-recheck", [self.python, "-m", "pip", "--version"]))
            self.step_count += 2
        elif kind == "pip-recheck" and code != 0:
            self._fail(packages.ensure_pip(self.python) or "pip is not available")
            return
        elif kind == "pip" and code != 0:
            self._fail(f"pip stopped with exit status {code}; see its output above (no connection? no wheel "
                       "for this Python?)")
            return
        elif kind == "check":
            self._checked(packages.parse_check(self._output, "", self.selected().modules))
            return
        self._next()

    def _checked(self, errors: dict[str, str]) -> None:
        """After pip: every module must import in a fresh interpreter, then in this QGIS."""
        if errors:
            for name, error in errors.items():
                self.log_view.appendPlainText(f"{name}: {error}")
            self._fail(f"installed, but {', '.join(errors)} cannot be imported (see the log)")
            return
        self.status.setText("Loading the packages into this QGIS...")
        QGuiApplication.processEvents()
        here = deps.load_installed(self.selected().modules)
        if here:
            self.log_view.appendPlainText("not loaded into this QGIS: "
                                          + "; ".join(f"{k} ({v})" for k, v in here.items()))
            self._end("restart", f"Installed. Restart QGIS to use them: {', '.join(here)} could not be loaded into "
                      "this QGIS session (another copy was loaded before).")
        else:
            self._end("ready", "Installed. RoadSeg is ready: Segment roads works now, no restart needed.")

    def _fail(self, message: str) -> None:
        self._end("failed", f"Failed: {message}")

    def _end(self, outcome: str, message: str) -> None:
        self.outcome, self.steps = outcome, []
        self.status.setText(message)
        self.log_view.appendPlainText(message)
        self._set_busy(False)
        if outcome in ("ready", "restart"):
            self.progress.setValue(100)
            self.refresh()
            self.installed.emit(outcome == "ready")

    def cancel_install(self) -> None:
        """Stop pip (kills the process); the outcome becomes "cancelled" once it has ended."""
        if self.running():
            self.cancelled = True
            self.status.setText("Cancelling...")
            self.process.kill()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API name)
        if self.running():  # closing the window while pip runs: stop it, do not leave it orphaned
            self.cancel_install()
            self.process.waitForFinished(5000)
        super().closeEvent(event)
