"""fsnn: single-spike (time-to-first-spike) spiking networks with exact spike-time gradients."""

from fsnn.core import EventTrace as EventTrace
from fsnn.core import LIFParams as LIFParams
from fsnn.core import batch_spike_times as batch_spike_times
from fsnn.core import first_spike_time as first_spike_time
from fsnn.core import lambertw as lambertw
from fsnn.core import layer_membrane as layer_membrane
from fsnn.core import layer_spike_times as layer_spike_times
from fsnn.core import membrane_potential as membrane_potential
from fsnn.core import psp_kernel as psp_kernel
from fsnn.core import resolve_solver as resolve_solver
from fsnn.core import simulate_neuron as simulate_neuron
from fsnn.core import spike_times_at as spike_times_at

__version__ = "0.1.0"
