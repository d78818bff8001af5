"""Pure JAX core of fsnn: neuron model, Lambert W, spike times and an event-driven oracle."""

from fsnn.core.batch_grad import batch_spike_times as batch_spike_times
from fsnn.core.events import EventTrace as EventTrace
from fsnn.core.events import simulate_neuron as simulate_neuron
from fsnn.core.lambertw import lambertw as lambertw
from fsnn.core.neuron import LIFParams as LIFParams
from fsnn.core.neuron import membrane_potential as membrane_potential
from fsnn.core.neuron import psp_kernel as psp_kernel
from fsnn.core.spike_time import first_spike_time as first_spike_time
from fsnn.core.spike_time import layer_membrane as layer_membrane
from fsnn.core.spike_time import layer_spike_times as layer_spike_times
from fsnn.core.spike_time import resolve_solver as resolve_solver
from fsnn.core.spike_time import spike_times_at as spike_times_at
