# Copyright: liveupdate.cpr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection's version, as the engine knows it on a host with no Ansible.

The journal records it with every save, and the boot unit's entry point
restores only saves of its own version. tests/unit keeps it equal to galaxy.yml's.
"""

COLLECTION_VERSION = "0.1.0"
