"""The `roadseg` Processing provider: lists the algorithms, nothing else."""
from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from ..log import PROVIDER_ID
from .base import ICON
from .evaluate_model import EvaluateModelAlgorithm
from .segment_region import SegmentRegionAlgorithm
from .segment_roads import SegmentRoadsAlgorithm
from .train_from_lines import TrainFromLinesAlgorithm
from .vectorise_mask import VectoriseMaskAlgorithm


class RoadSegProvider(QgsProcessingProvider):
    """Toolbox group "RoadSeg"; algorithm ids are `roadseg:<name>`."""

    def getAlgs(self) -> list:
        return [SegmentRoadsAlgorithm(), VectoriseMaskAlgorithm(), TrainFromLinesAlgorithm(),
                EvaluateModelAlgorithm(), SegmentRegionAlgorithm()]

    def loadAlgorithms(self) -> None:
        for algorithm in self.getAlgs():
            self.addAlgorithm(algorithm)

    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return "RoadSeg"

    def longName(self) -> str:
        return "RoadSeg: road extraction from aerial imagery"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))
